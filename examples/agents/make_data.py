"""Generate the support-router dataset for hone's agents example.

Each example is one customer message to "Fernhill Home" (a fictional shop of small home appliances) in OpenAI's
function-calling chat format: the `tools` list on every line, a system prompt, the user's request, and the
assistant's answer, which is either exactly one call to one of four functions or, for greetings, thanks and
questions about what the router can do, a short text reply with no call (about 15% of the examples).

    get_order_status(order_id)          where is my order / has it shipped
    refund_order(order_id, reason)      money back; reason is one of damaged, late, wrong_item, changed_mind
    update_address(order_id, city)      deliver it to another city
    talk_to_human(topic)                ask for a person; topic is one of billing, complaint, technical, other

Every function's parameters are a strict JSON Schema (all properties required, no others allowed), which is what
`hone serve` holds the model's calls to. Standard library only and fully deterministic: the same seed gives
byte-identical files. No request that needs a call is in both train and test (the few
greetings and thanks repeat).

    python examples/agents/make_data.py [--seed 7] [--train 300] [--test 60] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

SYSTEM = ("You are the support router of Fernhill Home. For each customer message call the one function that "
          "handles it; when no function is needed, answer briefly in text.")
ORDER_ID = {"type": "integer", "minimum": 10000, "maximum": 99999}
REASONS = ["damaged", "late", "wrong_item", "changed_mind"]
TOPICS = ["billing", "complaint", "technical", "other"]
TOOLS = [
    {"type": "function", "function": {
        "name": "get_order_status", "description": "Look up where an order is.",
        "parameters": {"type": "object", "properties": {"order_id": ORDER_ID},
                       "required": ["order_id"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "refund_order", "description": "Refund an order.",
        "parameters": {"type": "object", "properties": {"order_id": ORDER_ID, "reason": {"enum": REASONS}},
                       "required": ["order_id", "reason"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "update_address", "description": "Send an order to another city.",
        "parameters": {"type": "object", "properties": {"order_id": ORDER_ID, "city": {"type": "string"}},
                       "required": ["order_id", "city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "talk_to_human", "description": "Hand the customer to a person.",
        "parameters": {"type": "object", "properties": {"topic": {"enum": TOPICS}},
                       "required": ["topic"], "additionalProperties": False}}},
]

PRODUCTS = ["kettle", "air purifier", "desk lamp", "blender", "toaster", "humidifier", "robot vacuum",
            "coffee grinder", "space heater", "smart scale", "water filter", "rice cooker"]
CITIES = ["Leeds", "Bristol", "Glasgow", "Cardiff", "Manchester", "Dublin", "Edinburgh", "Norwich", "York",
          "Brighton", "Belfast", "Oxford", "Cambridge", "Liverpool", "Sheffield", "Aberdeen", "Bath", "Exeter",
          "Nottingham", "Plymouth", "Inverness", "Swansea", "Derby", "Leicester"]
OPENERS = ["", "", "", "Hi, ", "Hello, ", "Hi there. ", "Good morning, ", "Hey, "]
CLOSERS = ["", "", "", " Thanks.", " Thank you!", " Cheers.", " Please help."]
ORDER_REFS = ["order {id}", "order #{id}", "order number {id}", "my order {id}", "order no. {id}"]

STATUS = [
    "where is {ref}?", "can you tell me where {ref} is?", "has {ref} shipped yet?",
    "I'd like an update on {ref}.", "what's the status of {ref}?", "when will {ref} arrive?",
    "is {ref} on its way? It's the {product}.", "I'm still waiting for my {product}, {ref}. Any news?",
    "tracking for {ref} please.", "could you check on {ref} for me?",
]
REFUND = {
    "damaged": ["the {product} from {ref} arrived broken, I want my money back.",
                "{ref} came with a cracked {product}. Please refund it.",
                "my {product} ({ref}) was smashed in the box, refund please.",
                "the {product} in {ref} is damaged. I'd like a refund."],
    "late": ["{ref} is two weeks late, just refund me.", "I give up waiting for {ref}, please refund it.",
             "{ref} still hasn't arrived after a month. I want a refund.",
             "the {product} from {ref} is far too late now, refund it please."],
    "wrong_item": ["you sent me the wrong item for {ref}, I want a refund.",
                   "{ref} should be a {product} but I got something else. Refund please.",
                   "that's not what I ordered in {ref}. Please give me my money back.",
                   "wrong {product} colour in {ref}, I'd like a refund."],
    "changed_mind": ["I changed my mind about {ref}, can I get a refund?",
                     "I don't need the {product} from {ref} anymore, please refund it.",
                     "please cancel and refund {ref}, I no longer want it.",
                     "I'd like to return the {product} ({ref}) for a refund, I found one I like more."],
}
ADDRESS = [
    "please deliver {ref} to {city} instead.", "I've moved to {city}, can you send {ref} there?",
    "change the delivery city of {ref} to {city}.", "can {ref} go to my new place in {city}?",
    "update the address on {ref}: it should go to {city}.", "ship {ref} to {city} please, not my old address.",
    "I'm in {city} now. Redirect {ref} there?",
]
HUMAN = {
    "billing": ["I was charged twice, I need to talk to a person.", "can I speak to someone about my invoice?",
                "there's a payment I don't recognise, put me through to an agent."],
    "complaint": ["I want to make a formal complaint, get me a manager.",
                  "your service is terrible, I want to speak to a human.",
                  "I'd like to complain to a real person about the courier."],
    "technical": ["my {product} won't turn on, can a technician call me?",
                  "I need someone to help me set up my {product}.",
                  "the app won't pair with my {product}. Can I talk to support staff?"],
    "other": ["can I speak to a person please?", "I'd like to talk to somebody, it's about a partnership.",
              "connect me to an agent, it's a question about your careers page."],
}
CHAT = [  # (user message, the router's reply): nothing to call
    ("Hello!", "Hello! I can check an order, refund it, send it to another city or put you through to a person. "
               "How can I help?"),
    ("Hi there", "Hi! How can I help with your order today?"),
    ("Good morning", "Good morning! How can I help with your order today?"),
    ("Thanks, that's all.", "You're welcome. Have a good day!"),
    ("Thank you so much!", "You're welcome. Have a good day!"),
    ("Great, cheers", "Glad I could help. Have a good day!"),
    ("What can you do?", "I can check where an order is, refund an order, send an order to another city or put "
                         "you through to a person."),
    ("Who am I talking to?", "I'm the Fernhill Home support assistant. How can I help with your order?"),
    ("Bye", "Goodbye, and thanks for shopping with Fernhill Home."),
    ("ok thanks bye", "Goodbye, and thanks for shopping with Fernhill Home."),
    ("Are you open on Sundays?", "Our online support answers every day. How can I help with your order?"),
    ("Hey", "Hi! How can I help with your order today?"),
]


def call(name: str, arguments: dict) -> dict:
    """The assistant turn that makes one call (OpenAI form: `arguments` as a JSON string)."""
    return {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": name, "arguments": json.dumps(arguments)}}]}


def polish(text: str, rng: random.Random) -> str:
    """A request with an optional greeting and sign-off, starting with a capital letter."""
    opener = rng.choice(OPENERS)
    text = text if opener else text[0].upper() + text[1:]
    return f"{opener}{text}{rng.choice(CLOSERS)}"


def example(rng: random.Random) -> tuple[str, dict]:
    """One (user message, assistant turn), the kind drawn by the router's traffic mix."""
    order_id = rng.randint(10000, 99999)
    fill = {"ref": rng.choice(ORDER_REFS).format(id=order_id), "product": rng.choice(PRODUCTS),
            "city": rng.choice(CITIES)}
    kind = rng.choices(["status", "refund", "address", "human", "chat"], weights=[24, 22, 20, 19, 15])[0]
    if kind == "chat":
        user, reply = rng.choice(CHAT)
        return user, {"role": "assistant", "content": reply}
    if kind == "status":
        return polish(rng.choice(STATUS).format(**fill), rng), call("get_order_status", {"order_id": order_id})
    if kind == "refund":
        reason = rng.choice(REASONS)
        text = rng.choice(REFUND[reason]).format(**fill)
        return polish(text, rng), call("refund_order", {"order_id": order_id, "reason": reason})
    if kind == "address":
        text = rng.choice(ADDRESS).format(**fill)
        return polish(text, rng), call("update_address", {"order_id": order_id, "city": fill["city"]})
    topic = rng.choice(TOPICS)
    return polish(rng.choice(HUMAN[topic]).format(**fill), rng), call("talk_to_human", {"topic": topic})


def make_split(rng: random.Random, count: int, taken: set[str]) -> list[dict]:
    """`count` lines whose user messages are not in `taken` (chat messages repeat within a split only)."""
    lines = []
    while len(lines) < count:
        user, answer = example(rng)
        if user in taken:
            continue
        if "tool_calls" in answer:
            taken.add(user)
        lines.append({"tools": TOOLS, "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": user}, answer]})
    return lines


def answer_kind(line: dict) -> str:
    """The function the line's answer calls, or "text"."""
    answer = line["messages"][-1]
    return answer["tool_calls"][0]["function"]["name"] if "tool_calls" in answer else "text"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    taken: set[str] = set()
    test = make_split(rng, args.test, taken)  # drawn first, so train never repeats a test request
    train = make_split(rng, args.train, taken)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train", train), ("test", test)):
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        counts = Counter(answer_kind(line) for line in lines)
        print(f"{path}: {len(lines)} examples, {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
