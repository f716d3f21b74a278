"""Generate the support-ticket triage example dataset for hone's demo.

Each example is a customer email or chat message to "Fernhill Home", a fictional maker of small home
appliances, and the answer is a compact JSON object with a fixed schema:

    {"category": ..., "product": ..., "order_id": ..., "urgency": ..., "sentiment": ...}

The labels follow conventions a careful reader can apply to the text alone:
- category: what the customer needs (billing = charges, payments, invoices; shipping = delivery;
  technical = the product misbehaves; account = login, profile, data; returns = sending a product back).
- product: the canonical catalog name, even when the ticket says "my Kestrel" or "the Kestrel kettle".
- order_id: the "ORD-" + 5 digits reference written in the ticket, or null when there is none.
- urgency: "high" only with an explicit urgency cue (ASAP, today, third time...), "low" only with an
  explicit no-rush cue, otherwise "medium".
- sentiment: "negative" only with explicit frustration, "positive" only with explicit praise or warm
  thanks, otherwise "neutral" (a plain "Thanks" sign-off is neutral).

Standard library only and fully deterministic: the same seed gives byte-identical files.

    python examples/support_tickets/make_data.py [--seed 7] [--train 360] [--test 80] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

SYSTEM = "Extract the ticket fields as JSON."
CATEGORIES = ["billing", "shipping", "technical", "account", "returns"]
COMPANY = "Fernhill"

# Canonical name -> (brand word, lower-case noun used in natural mentions, technical symptoms).
# Every symptom reads after "it" or after the product name ("my Kestrel Kettle leaks from the base").
PRODUCTS = {
    "Kestrel Kettle": ("Kestrel", "kettle", [
        "won't switch off after boiling", "leaks from the base", "lights up but doesn't heat the water"]),
    "Brisa Air Purifier": ("Brisa", "air purifier", [
        "keeps showing a red filter light", "rattles loudly on the high setting", "won't connect to the app"]),
    "Lumo Desk Lamp": ("Lumo", "desk lamp", [
        "flickers constantly", "ignores the touch dimmer", "won't turn on at all"]),
    "Tidewater Blender": ("Tidewater", "blender", [
        "stops after a few seconds", "smells like something is burning", "hums but the blade doesn't spin"]),
    "Ember Toaster": ("Ember", "toaster", [
        "only toasts one side", "won't keep the lever down", "burns the bread even on the lowest setting"]),
    "Nimbus Humidifier": ("Nimbus", "humidifier", [
        "shows error E3", "doesn't produce any mist", "leaks water onto the table"]),
    "Orbit Robot Vacuum": ("Orbit", "robot vacuum", [
        "keeps getting stuck next to the dock", "won't connect to the wifi", "stops with error E7"]),
    "Solstice Coffee Grinder": ("Solstice", "coffee grinder", [
        "jams on the fine setting", "hums but doesn't grind anything", "grinds really unevenly"]),
    "Pinecrest Space Heater": ("Pinecrest", "space heater", [
        "shuts off after ten minutes", "blows cold air", "has a blank thermostat display"]),
    "Glint Smart Scale": ("Glint", "smart scale", [
        "gives a different weight every time", "won't pair with my phone", "stays blank even with new batteries"]),
    "Harbor Water Filter": ("Harbor", "water filter", [
        "makes the water taste odd", "has a really slow flow", "drips from the tap connector"]),
    "Cascade Espresso Machine": ("Cascade", "espresso machine", [
        "pumps loudly but no coffee comes out", "shows a descale warning that won't clear",
        "has a steam wand that doesn't work"]),
}
PRODUCT_NAMES = list(PRODUCTS)

# {p} product mention, {o} inline order reference (may be empty), {issue} technical symptom,
# {amt}/{amt2} money, {code} promo code, {dur} a duration, {when} a past time, {n} a small number,
# {color} a colour.
TEMPLATES = {
    "billing": [
        "I was charged twice for my {p}{o}. My card shows two payments of {amt}. Please refund the duplicate.",
        "I paid {amt} for the {p}{o}, but the checkout page said {amt2}. Can you correct the charge?",
        "My discount code {code} didn't apply when I bought the {p}{o}. Could you refund the difference?",
        "I need an invoice with my company details for the {p}{o}. It's for my expense report.",
        "I cancelled the extended warranty on my {p}{o} but I was still billed {amt} this month.",
        "My payment for the {p}{o} failed at checkout, but the money left my bank account anyway. What happened?",
        "Can you explain an extra charge of {amt} on my statement? It appeared after I ordered the {p}{o}.",
        "You charged my old card instead of the new one for the {p}{o}. Can the payment be moved?",
        "I was promised a price match on the {p}{o} but I never got the {amt} back.",
        "The {p}{o} was on sale for {amt} but I was charged the full price.",
        "I was charged for delivery on my {p}{o} even though the order qualified for free shipping.",
        "I paid for the {p}{o} with a gift card, but the full amount was also taken from my credit card.",
        "Billing question about the {p}{o}: the tax on my receipt looks wrong. Could someone double check it?",
        "The monthly instalment for my {p}{o} was taken twice this month, {amt} each time.",
        "There is still a pending charge of {amt} for a {p}{o} I never finished buying. Please remove it.",
        "Could you resend the receipt for my {p}{o}? The payment confirmation email never arrived.",
    ],
    "shipping": [
        "My {p}{o} was supposed to arrive {when} and it still hasn't shown up.",
        "The tracking for my {p}{o} hasn't updated in {n} days. Has the parcel been lost?",
        "The courier says my {p}{o} was delivered, but there is nothing at my door.",
        "I need to change the delivery address for my {p}{o} before it ships. I've just moved.",
        "The box with my {p}{o} arrived crushed and the item inside is dented.",
        "The parcel{o} arrived today, but the {p} wasn't inside. Only the manual was in the box.",
        "When will my {p}{o} actually ship? The website said two days and it's been over a week.",
        "I chose express delivery for the {p}{o}, but tracking shows standard post and a date next week.",
        "The driver left my {p}{o} with a neighbour I don't know. Can you find out which house?",
        "Which courier is delivering my {p}{o}? The tracking link in the email doesn't work.",
        "According to tracking my {p}{o} has been stuck at the depot since {when}.",
        "I got a missed delivery card for my {p}{o}. How do I rebook the delivery?",
        "A parcel addressed to someone else arrived instead of my {p}{o}.",
        "My {p}{o} was sent to my old address even though I updated it at checkout.",
        "The {p}{o} shows as shipped, but the tracking number says it doesn't exist.",
        "Can you hold my {p}{o} at the depot? I'll be away on the day it's due.",
    ],
    "technical": [
        "My {p}{o} {issue}. I've tried unplugging it and restarting, but nothing changes.",
        "Since {when}, the {p}{o} {issue}. Is there a fix or a reset I can try?",
        "I'm having trouble with my {p}{o}: it {issue}. I already followed the troubleshooting steps in the manual.",
        "Quick question. The {p} I bought{o} {issue}. Is this a known problem?",
        "I set up my new {p}{o} yesterday and it already {issue}. What should I do?",
        "The {p}{o} {issue} every time I use it. Could you tell me how to fix this?",
        "Not sure if this is a defect, but my {p}{o} {issue}. A factory reset didn't help.",
        "My {p} worked fine for {dur}, but now it {issue}. Please advise.",
        "Our {p}{o} {issue}. Can you send troubleshooting steps or book a repair?",
        "Technical issue: the {p}{o} {issue}. I checked the socket and it works fine.",
        "Is there a firmware update for the {p}? Mine{o} {issue}.",
        "I'm writing because the {p}{o} {issue}. I've already cleaned it and checked all the parts.",
        "Help please, my {p}{o} {issue} and I can't figure out why.",
        "After a power cut last night my {p}{o} {issue}. Is it broken or is there a reset button?",
        "I think something is wrong with my {p}{o}. It {issue}, even after a thorough clean.",
        "The {p} I got{o} {issue}. Is a repair covered by the warranty?",
    ],
    "account": [
        "I can't log into my account to register the warranty for my {p}{o}. The password reset email never arrives.",
        "Please change the email address on my account. I want the receipt for my {p}{o} sent to the new one.",
        "My account was locked after too many login attempts, so I can't see the details of my {p}{o}.",
        "I bought the {p}{o} as a guest. Can you link that purchase to my account?",
        "I'd like to close my account and have my personal data deleted. My last purchase was a {p}{o}.",
        "The {p}{o} doesn't appear in my account's order history, even though I was logged in when I bought it.",
        "I created two accounts by mistake and my {p}{o} is on the wrong one. Can you merge them?",
        "Someone changed the password on my account. I only noticed because of an email about my {p}{o}.",
        "Please take me off the marketing emails on my account. I keep getting adverts for the {p} I already own{o}.",
        "I can't sign in to the {company} app to control my {p}{o}. It says my account doesn't exist.",
        "How do I update the phone number on my account? I set the account up when I bought my {p}{o}.",
        "The two-factor code never arrives, so I can't get into my account to see the warranty for my {p}{o}.",
        "The loyalty points for my {p}{o} never showed up on my account.",
        "I want to change the name on my account. The {p}{o} was ordered under my old surname.",
        "I keep getting logged out of my account whenever I try to register my {p}{o}.",
        "Can you add my partner as a second user on our account? We share the {p}{o} and both want access in the app.",
    ],
    "returns": [
        "I'd like to return my {p}{o}. It's just too big for the space we have.",
        "Can I exchange the {p}{o} for a different colour? The {color} one doesn't match our room.",
        "How do I get a return label for my {p}{o}? It's still unopened.",
        "I started a return for the {p}{o} but never got the return label by email.",
        "Is it too late to return the {p}{o}? I bought it {dur} ago and changed my mind.",
        "The {p}{o} isn't what I expected. I'd like to send it back for a refund.",
        "I got a {p}{o} as a gift but I already have one. Can I return it without a receipt?",
        "Please arrange a collection for the return of my {p}{o}. It's too heavy to carry to the post office.",
        "I'd like to swap my {p}{o} for the newer model. Is an exchange possible?",
        "Where can I drop off my {p}{o} for a return? Is there a location near me?",
        "I want to return the {p}{o} because it's louder than I expected. Do I need the original box?",
        "The return window for my {p}{o} is 30 days. Does that start from delivery or from purchase?",
        "I ordered two of the {p}{o} by mistake. How can I send one back?",
        "I posted my {p}{o} back to you last week. Can you confirm you received the return?",
        "I'd like to send back the {p}{o}. It doesn't suit our needs after all.",
        "My {p}{o} is unused and still in the box. What's the process for returning it?",
    ],
}

# Inline order references (filled into {o}) and standalone sentences.
INLINE_ORDER = [" (order {id})", " ({id})", " from order {id}", " on order {id}", ", order {id},"]
STANDALONE_ORDER = [
    "Order number: {id}.", "My order number is {id}.", "This is about order {id}.", "Ref: {id}.",
    "The order is {id}.", "Order {id} for reference.", "It was order {id}.", "Order #{id}.",
]
NO_ORDER_NOTES = [
    "I don't have the order number to hand, sorry.", "I can't find my order number anywhere.",
    "I bought it in a shop, so I don't have an order number.", "Not sure where to find the order number.",
]

URGENCY_CUES = {
    "high": [
        "I need this sorted ASAP.", "This is urgent.", "Please treat this as urgent.", "I need an answer today.",
        "Please deal with this immediately.", "URGENT, please reply today.",
        "I need this resolved by tomorrow at the latest.", "Please respond as soon as possible, it's time sensitive.",
    ],
    "medium": [
        "Could you get back to me this week?", "I'd like this resolved in the next few days.",
        "A reply in the next couple of days would be great.", "Please look into it this week.",
    ],
    "low": [
        "No rush, whenever you get a chance.", "Not urgent at all.", "No hurry on this one.",
        "Whenever you have time is fine.", "It's not a big deal, just wanted to flag it.",
        "Take your time, it's not urgent.",
    ],
}
# High-urgency cues that are also angry: only used when the sentiment is negative.
HIGH_NEGATIVE_CUES = [
    "This is the third time I'm contacting you about this.",
    "I've already emailed twice with no answer, so please sort this out ASAP.",
]
SENTIMENT_CUES = {
    "negative": [
        "I'm really frustrated.", "This is unacceptable.", "Honestly, I'm very disappointed.",
        "Not happy about this at all.", "Pretty annoyed, to be honest.", "This has been a terrible experience.",
        "I expected much better from you.", "I'm really fed up with this.",
    ],
    "positive": [
        "I love your products, so I'm sure you can help.", "You've always been great to deal with!",
        "Big fan of {company}, by the way.", "Thanks so much, I really appreciate your help!",
        "Your team was lovely last time, so thanks in advance!", "Great service as always :)",
        "I'm really happy with everything else I've bought from you!",
    ],
}

EMAIL_GREETINGS = [
    "Hi,", "Hello,", "Hi there,", "Good morning,", "Dear support team,", "Hello support,",
    "To whom it may concern,", "Hi {company} team,", "Dear {company},", "Good afternoon,",
]
CHAT_GREETINGS = ["hi", "hey", "Hi!", "Hello", "hey there", ""]
EMAIL_SIGNOFFS = ["Thanks,\n{name}", "Regards,\n{name}", "Best,\n{name}", "Kind regards,\n{name}",
                  "Cheers,\n{name}", "Thank you,\n{name}", "{name}", "Thanks"]
CHAT_SIGNOFFS = ["", "", "thanks", "thx", "ty"]
NAMES = ["Dana", "Priya", "Tom", "Marcus", "Elena", "Sam", "Aiko", "Jonas", "Fatima", "Leo",
         "Grace", "Omar", "Ines", "Ravi", "Clara", "Ben", "Noor", "Mateo", "Hannah", "Kofi"]
SUBJECTS = ["Subject: Help please", "Subject: Question", "Subject: {brand}", "Subject: Support request",
            "Subject: Problem"]
FILLERS = [
    "I checked the help pages first but couldn't find an answer.", "I bought it about {dur} ago.",
    "It was a present for my mum.", "We use it every day at home.", "I'm a long-time customer.",
    "I can send photos if that helps.",
]
WHEN = ["last Tuesday", "on Monday", "three days ago", "last week", "yesterday", "on Friday", "the weekend"]
DURATIONS = ["two weeks", "a month", "three months", "six weeks", "ten days", "half a year", "a year"]
COLORS = ["white", "black", "sage green", "grey", "red", "navy"]

MIN_WORDS, MAX_WORDS = 25, 50


def product_mention(rng: random.Random, name: str) -> str:
    brand, noun, _ = PRODUCTS[name]
    r = rng.random()
    if r < 0.6:
        return name
    if r < 0.85:
        return f"{brand} {noun}"
    return brand


def typo(rng: random.Random, text: str) -> str:
    """Swap, drop or double one letter in one plain lower-case word (never names, ids or cues)."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if re.fullmatch(r"[a-z]{5,}[,.:?]?", w)]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    core, tail = (w[:-1], w[-1]) if not w[-1].isalpha() else (w, "")
    j = rng.randrange(1, len(core) - 1)
    kind = rng.choice(["swap", "drop", "double"])
    if kind == "swap":
        core = core[:j] + core[j + 1] + core[j] + core[j + 2:]
    elif kind == "drop":
        core = core[:j] + core[j + 1:]
    else:
        core = core[:j] + core[j] + core[j:]
    words[i] = core + tail
    return " ".join(words)


def fill(rng: random.Random, template: str, **slots: str) -> str:
    amt = rng.choice([19, 24, 29, 34, 39, 49, 59, 79, 89, 119, 149, 199])
    values = {
        "amt": f"${amt}.99", "amt2": f"${amt - rng.choice([5, 10, 15])}.99",
        "code": rng.choice(["SPRING15", "WELCOME10", "HOME20", "FERN5", "SAVE25"]),
        "dur": rng.choice(DURATIONS), "when": rng.choice(WHEN), "n": rng.choice(["four", "five", "six", "ten"]),
        "color": rng.choice(COLORS), "company": COMPANY,
    }
    values.update(slots)
    return template.format(**values)


def make_ticket(rng: random.Random, category: str) -> tuple[str, dict]:
    product = rng.choice(PRODUCT_NAMES)
    missing = {"billing": 0.15, "shipping": 0.1, "technical": 0.3, "account": 0.55, "returns": 0.15}[category]
    order_id = None if rng.random() < missing else f"ORD-{rng.randrange(10000, 100000)}"
    urgency = rng.choices(["high", "medium", "low"], weights=[3, 4, 3])[0]
    sentiment = rng.choices(["negative", "neutral", "positive"], weights=[40, 35, 25])[0]

    template = rng.choice(TEMPLATES[category])
    placement = None
    if order_id:
        if "{o}" in template and rng.random() < 0.55:
            placement = "inline"
        else:
            placement = rng.choice(["start", "end", "end", "signature"])
    inline = rng.choice(INLINE_ORDER).format(id=order_id) if placement == "inline" else ""
    issue = rng.choice(PRODUCTS[product][2])
    body = fill(rng, template, p=product_mention(rng, product), o=inline, issue=issue)
    body = re.sub(r",([.?:!])", r"\1", body)  # ", order ORD-12345," before a full stop
    if rng.random() < 0.15:
        body = typo(rng, body)

    sentences = [body]
    if placement == "start":
        sentences.insert(0, rng.choice(STANDALONE_ORDER).format(id=order_id))
    elif placement == "end":
        sentences.append(rng.choice(STANDALONE_ORDER).format(id=order_id))
    if order_id is None and rng.random() < 0.3:
        sentences.append(rng.choice(NO_ORDER_NOTES))

    cues = []
    if urgency == "high":
        pool = URGENCY_CUES["high"] + (HIGH_NEGATIVE_CUES if sentiment == "negative" else [])
        cues.append(rng.choice(pool))
    elif urgency == "low" or rng.random() < 0.4:
        cues.append(rng.choice(URGENCY_CUES[urgency]))
    if sentiment != "neutral":
        cues.append(fill(rng, rng.choice(SENTIMENT_CUES[sentiment])))
    rng.shuffle(cues)
    if cues and rng.random() < 0.25:  # sometimes open with the cue: "This is urgent. My kettle ..."
        sentences.insert(0, cues.pop(0))
    sentences.extend(cues)

    while len(" ".join(sentences).split()) < MIN_WORDS:  # pad short tickets with neutral context
        after_body = sentences.index(body) + 1
        sentences.insert(rng.randrange(after_body, len(sentences) + 1), fill(rng, rng.choice(FILLERS)))

    name = rng.choice(NAMES)
    text = " ".join(sentences)
    if rng.random() < 0.7:  # email
        greeting = fill(rng, rng.choice(EMAIL_GREETINGS))
        signoff = rng.choice(EMAIL_SIGNOFFS).format(name=name)
        if placement == "signature":
            signoff += f"\nOrder {order_id}"
        head = greeting
        if rng.random() < 0.12:
            head = fill(rng, rng.choice(SUBJECTS), brand=PRODUCTS[product][0]) + "\n" + greeting
        ticket = f"{head}\n{text}\n{signoff}"
    else:  # chat
        greeting = rng.choice(CHAT_GREETINGS)
        if greeting and greeting[-1].isalpha():
            if rng.random() < 0.6:
                greeting += ","
                if not text.startswith(("I ", "I'", "URGENT")):
                    text = text[0].lower() + text[1:]
            else:
                greeting += "."
        parts = [greeting, text]
        if placement == "signature":
            parts.append(f"order {order_id}")
        parts.append(rng.choice(CHAT_SIGNOFFS))
        ticket = " ".join(p for p in parts if p)

    labels = {"category": category, "product": product, "order_id": order_id,
              "urgency": urgency, "sentiment": sentiment}
    return ticket, labels


def word_count(text: str) -> int:
    return len(text.split())


def example(ticket: str, labels: dict) -> dict:
    answer = json.dumps(labels, separators=(", ", ": "))
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": ticket},
                         {"role": "assistant", "content": answer}]}


def generate(rng: random.Random, n: int, seen: set[str]) -> list[dict]:
    """n examples stratified across categories, none whose ticket text is already in `seen`."""
    cats = [CATEGORIES[i % len(CATEGORIES)] for i in range(n)]
    rng.shuffle(cats)
    out = []
    for cat in cats:
        while True:
            ticket, labels = make_ticket(rng, cat)
            if ticket in seen or not MIN_WORDS <= word_count(ticket) <= MAX_WORDS:
                continue  # collision or too long: draw again
            seen.add(ticket)
            out.append(example(ticket, labels))
            break
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def stats(name: str, rows: list[dict]) -> None:
    labels = [json.loads(r["messages"][2]["content"]) for r in rows]
    words = [word_count(r["messages"][1]["content"]) for r in rows]
    print(f"{name}: {len(rows)} examples, mean words {sum(words) / len(words):.1f} "
          f"(min {min(words)}, max {max(words)}), order_id missing {sum(l['order_id'] is None for l in labels)}")
    for key in ("category", "urgency", "sentiment"):
        counts = Counter(l[key] for l in labels)
        print(f"  {key:9s} " + ", ".join(f"{k}={counts[k]}" for k in sorted(counts)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--train", type=int, default=360)
    ap.add_argument("--test", type=int, default=80)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    seen: set[str] = set()
    train = generate(rng, args.train, seen)
    test = generate(rng, args.test, seen)  # `seen` holds every train ticket, so no test ticket repeats one
    assert not {r["messages"][1]["content"] for r in train} & {r["messages"][1]["content"] for r in test}

    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "test.jsonl", test)
    stats("train", train)
    stats("test", test)


if __name__ == "__main__":
    main()
