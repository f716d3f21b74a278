"""PII recall: planted personal data of every kind hone masks, in varied support, legal and finance sentences.

For each kind, `--per-kind` values (fixed seed) are planted in sentences; a value counts as masked only when
no letter or digit of it survives (every character is inside a finding), and its label is right when every
finding over it has the planted kind. Clean sentences (order numbers, versions, prices, ordinary dates)
give the false-positive rate: the share that comes back changed. Speed is examples/s through
`Scrubber.find` + `replace` with the NER model (the default) against patterns only, in the same run.
Prints one JSON line; misses go to stderr.

    python bench/pii_recall.py [--per-kind 30] [--seed 7] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from collections.abc import Callable

FIRST = ("Maria", "Hans", "Priya", "Oluwaseun", "Wei", "Siobhan", "Mateo", "Ingrid", "Kwame", "Yuki", "Fatima",
         "Lars", "Chloe", "Dmitri", "Aisha", "Tomás", "Elena", "Rahul", "Grace", "Jonas", "Amara", "Lucas",
         "Sofia", "Omar", "Hannah", "Kenji", "Isabella", "Noah", "Zainab", "Pierre")
LAST = ("Gonzalez", "Müller", "Natarajan", "Adeyemi", "Zhang", "O'Connor", "Rossi", "Johansson", "Mensah",
        "Tanaka", "Haddad", "Nielsen", "Dubois", "Volkov", "Khan", "García", "Petrova", "Sharma", "Thompson",
        "Becker", "Okafor", "Silva", "Moreau", "Farouk", "Schmidt", "Watanabe", "Rodriguez", "Walsh", "Bello",
        "Laurent")
PLACES = ("Manchester", "Lyon", "São Paulo", "Nairobi", "Toronto", "Melbourne", "Hamburg", "Barcelona", "Dublin",
          "Chicago", "Mumbai", "Osaka", "Lagos", "Stockholm", "Edinburgh", "Seattle", "Marseille", "Vienna",
          "Denver", "Rotterdam", "Glasgow", "Boston", "Munich", "Cape Town", "Auckland", "Leeds", "Atlanta",
          "Brisbane", "Zurich", "Houston")
STREETS = ("Downing", "Baker", "High", "Church", "Victoria", "Station", "Pennsylvania", "Maple", "Oak", "Park",
           "Elm", "Kings", "Queen", "Mill", "Cedar", "Lincoln", "Washington", "Market", "Bridge", "Green")
UK_SUFFIXES = ("Street", "Road", "Lane", "Close", "Avenue", "Crescent", "Terrace", "Gardens")
US_SUFFIXES = ("Street", "Avenue", "Boulevard", "Drive", "Road", "Court", "Lane", "Way")
UK_TOWNS = ("London", "Leeds", "Bristol", "Manchester", "Cardiff", "York", "Oxford", "Brighton")
US_CITIES = (("Washington", "DC"), ("Springfield", "IL"), ("Austin", "TX"), ("Portland", "OR"),
             ("Denver", "CO"), ("Boston", "MA"), ("Seattle", "WA"), ("Miami", "FL"))
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
CLEAN = (
    "Please check order 12345 and tell me when it ships.", "We upgraded to version 3.8 last week.",
    "Ticket 1680 was closed by the night shift.", "Your invoice dated 04/11/2024 is attached.",
    "The plan costs $49.99 per month, billed annually.", "Error 502 appears after upgrading to 2.4.1.",
    "Reset your password within 24 hours of receiving the link.", "Your subscription renews on March 3, 2025.",
    "Open Settings, then Billing, and click Save.", "Look at example.com for the full changelog.",
    "We shipped 3 boxes on Monday and 2 more on Tuesday.", "The meeting is at 10 am in room 4.",
    "Clause 7.2 of the agreement limits liability to 12 months of fees.",
    "Invoice INV-2024-0042 is overdue by 15 days.",
    "The refund of 120 EUR was issued on 2024-06-30.", "Batch 77 failed with timeout after 300 seconds.",
    "Our SLA promises 99.9% uptime per quarter.", "Please attach screenshots 1 to 5 to the case.",
    "The export finished: 18,452 rows in 42 seconds.", "Step 3: click the blue button on the right.",
    "Q3 revenue grew 14% against Q2.", "The API returns 429 when you exceed 60 requests per minute.",
    "Case 88231 was escalated to tier 2 support.", "The lease runs for 24 months from the start date.",
    "Download the 64-bit installer, about 120 MB.", "We close at 5 pm on the 24th and reopen on the 2nd.",
    "Your trial ends in 14 days unless you pick a plan.", "Section 4(b) applies to all renewals after 2023.",
    "The webhook retried 5 times with a 30 second backoff.", "Set the timeout to 120 and the batch size to 64.",
    "Account settings moved to the new dashboard in release 5.", "Click at the dot in the corner to expand it.",
    "The contract value is 250,000 USD over 3 years.", "We received 1,200 tickets in week 32.",
    "Order 99812 contains 4 items and ships in 2 parcels.", "The security team reviews access every 90 days.",
    "Use code SAVE20 for 20% off your first 3 months.", "Firmware 10.4.2 fixes the sync bug from 10.4.1.",
    "Meet me at the office at noon.", "The account was created in 2019 and upgraded twice.",
    "Extract the ticket fields as JSON.", '{"category": "billing", "order_id": "ORD-25772", "urgency": "low"}',
)


def phone(rng: random.Random) -> str:
    area = rng.choice((212, 415, 617, 312, 206, 303, 512, 305, 404, 718, 646, 213, 702, 617, 919))
    mid, end = rng.randint(200, 989), rng.randint(1000, 9999)
    return rng.choice((f"+1 {area} {mid} {end}", f"({area}) {mid}-{end}", f"{area}-{mid}-{end}",
                       f"+1 ({area}) {mid}-{end}", f"+44 20 7946 {rng.randint(1000, 9999)}",
                       f"020 7946 {rng.randint(1000, 9999)}", f"+49 30 {rng.randint(1000000, 9999999)}"))


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return digits + str((10 - total % 10) % 10)


def credit_card(rng: random.Random) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("55", 16), ("37", 15)))
    number = luhn_complete(prefix, length, rng)
    sep = rng.choice((" ", "-", ""))
    groups = [number[i:i + 4] for i in range(0, 16, 4)] if length == 16 else [number[:4], number[4:10], number[10:]]
    return sep.join(groups)


def iban(rng: random.Random) -> str:
    country, length = rng.choice((("GB", 22), ("DE", 22), ("FR", 27), ("NL", 18), ("ES", 24)))
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
        bban += "".join(rng.choice(string.digits) for _ in range(length - 8))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(length - 4))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    code = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return code if rng.random() < 0.5 else " ".join(code[i:i + 4] for i in range(0, len(code), 4))


def ip_address(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "2001:db8:" + ":".join(f"{rng.randint(0, 65535):x}" for _ in range(6))
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def email(rng: random.Random) -> str:
    user = rng.choice(FIRST).lower().replace("á", "a") + rng.choice((".", "_", "")) + rng.choice(LAST).lower()
    user = user.encode("ascii", "ignore").decode().replace("'", "")
    domain = rng.choice(("example.com", "northwind-mail.com", "contoso.co.uk", "fabrikam.org", "mail.example.net"))
    style = rng.randrange(4)
    if style == 0:
        return f"{user}@{domain}"
    if style == 1:
        return f"{user} at {domain.replace('.', ' dot ')}"
    if style == 2:
        return f"{user} [at] {domain.replace('.', ' [dot] ')}"
    return f"{user} (at) {domain}"


def street_address(rng: random.Random) -> str:
    number, name = rng.randint(1, 2400), rng.choice(STREETS)
    if rng.random() < 0.5:
        return f"{number} {name} {rng.choice(UK_SUFFIXES)}, {rng.choice(UK_TOWNS)} {uk_postcode(rng)}"
    city, state = rng.choice(US_CITIES)
    direction = rng.choice(("", " NW", " SE"))
    return f"{number} {name} {rng.choice(US_SUFFIXES)}{direction}, {city}, {state} {rng.randint(10000, 99999)}"


def uk_postcode(rng: random.Random) -> str:
    area = rng.choice(("SW1A", "EC1A", "W1A", "M1", "B33", "CR2", "LS1", "G2", "NW1", "E14", "BS8", "CF10"))
    return f"{area} {rng.randint(0, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"


def passport(rng: random.Random) -> str:
    shape = rng.randrange(3)
    if shape == 0:
        return "".join(rng.choice(string.digits) for _ in range(9))
    if shape == 1:
        return rng.choice(string.ascii_uppercase) + "".join(rng.choice(string.digits) for _ in range(8))
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(2)) + str(rng.randint(1000000, 9999999))


def birth_date(rng: random.Random) -> str:
    day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.randint(1940, 2005)
    return rng.choice((f"{day:02d}/{month:02d}/{year}", f"{year}-{month:02d}-{day:02d}",
                       f"{day} {MONTHS[month - 1]} {year}", f"{MONTHS[month - 1]} {day}, {year}",
                       f"{day}.{month}.{year}"))


def uk_bank(rng: random.Random) -> tuple[str, str]:
    sort = f"{rng.randint(10, 99)}-{rng.randint(0, 99):02d}-{rng.randint(0, 99):02d}"
    return sort, str(rng.randint(10000000, 99999999))


# kind -> (value maker, sentence templates). {0} (and {1}) are the planted values.
PLANTS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "PERSON": (lambda rng: f"{rng.choice(FIRST)} {rng.choice(LAST)}", (
        "Hi, this is {0} from accounts, I still can't log in.", "Please forward the signed contract to {0} today.",
        "{0} reported that the invoice was charged twice.", "The claimant, {0}, disputes the termination notice.",
        "Can you reset the password for {0}? She is locked out.", "Escalated by {0} after the third failed refund.")),
    "LOCATION": (lambda rng: rng.choice(PLACES), (
        "I moved to {0} last month and need to update my billing details.",
        "Our office in {0} is closed on Monday.", "The parcel has been stuck in a depot near {0} for a week.",
        "The supplier is incorporated in {0} and the contract follows local law.")),
    "STREET_ADDRESS": (street_address, (
        "Please ship the replacement to {0}.", "My new address is {0}, effective immediately.",
        "The tenant resides at {0} under the lease.", "Registered office: {0}.")),
    "UK_POSTCODE": (uk_postcode, (
        "My postcode is {0}, can you deliver there?", "The delivery postcode {0} is not recognised by checkout.",
        "Is {0} inside your same-day delivery area?")),
    "PASSPORT_NUMBER": (passport, (
        "For the visa letter, my passport number is {0}.", "Passport No. {0}, expiring next year.",
        "The traveller's passport: {0}.", "Please update my booking with passport {0}.")),
    "DATE_OF_BIRTH": (birth_date, (
        "I was born on {0}, the form keeps rejecting it.", "DOB: {0}", "Date of birth {0}, policy holder.",
        "Her birthday is {0} so the account is not a minor's.", "The applicant (born {0}) signed the form.")),
    "UK_BANK_ACCOUNT": (uk_bank, (
        "Please refund to sort code {0}, account {1}.", "Bank details: account number {1}, sort code {0}.",
        "Pay the deposit to sort-code {0} and account no. {1} by Friday.")),
    "CVV": (lambda rng: str(rng.randint(100, 9999)) if rng.random() < 0.2 else f"{rng.randint(100, 999)}", (
        "The card was declined even though the CVV {0} is right.", "Security code: {0}",
        "I typed the CVC {0} twice and it still fails.", "Card verification code is {0}, please retry.")),
    "EMAIL_ADDRESS": (email, (
        "Send the receipt to {0} please.", "You can reach me at {0} any time.",
        "Contact for notices under this agreement: {0}.", "My login email {0} stopped receiving codes.")),
    "US_SSN": (ssn, (
        "My SSN is {0}, the tax form needs it.", "Social security number: {0}.", "Employee record {0} was updated.",
        "Please verify {0} against the W-2.")),
    "PHONE_NUMBER": (phone, (
        "Call me back on {0} after five.", "My new number is {0}.", "Reach the tenant at {0} for access.",
        "Phone: {0}")),
    "CREDIT_CARD": (credit_card, (
        "My card {0} was charged twice.", "Please refund to the card ending in the number {0}.",
        "Payment method: {0}.")),
    "IBAN_CODE": (iban, (
        "Wire the refund to {0}.", "IBAN: {0}", "The supplier's account {0} rejected the transfer.")),
    "IP_ADDRESS": (ip_address, (
        "The server at {0} rejects my login.", "Logins from {0} were blocked by the firewall.",
        "Whitelist {0} for the webhook.")),
}


def planted(per_kind: int, seed: int) -> list[tuple[str, str, list[tuple[int, int]]]]:
    """(kind, sentence, spans of the planted values), `per_kind` values of every kind."""
    rng = random.Random(seed)
    rows = []
    for kind, (make, templates) in PLANTS.items():
        for index in range(per_kind):
            values = make(rng)
            values = values if isinstance(values, tuple) else (values,)
            template = templates[index % len(templates)]
            text = template.format(*values)
            spans, cursor = [], 0
            for number in sorted(range(len(values)), key=lambda n: template.index(f"{{{n}}}")):
                start = text.index(values[number], cursor)
                spans.append((start, start + len(values[number])))
                cursor = start + len(values[number])
            rows.append((kind, text, spans))
    return rows


def masked(text: str, span: tuple[int, int], findings: list) -> bool:
    """No letter or digit of text[span] lies outside every finding."""
    covered = set()
    for finding in findings:
        covered.update(range(finding.start, finding.end))
    return all(i in covered for i in range(*span) if text[i].isalnum())


def score(scrubber, rows, clean) -> dict:
    recall: dict[str, list[int]] = {}
    label: dict[str, list[int]] = {}
    for kind, text, spans in rows:
        findings = scrubber.find(text)
        hit = all(masked(text, span, findings) for span in spans)
        over = [f.entity_type for f in findings for s, e in spans if f.start < e and s < f.end]
        recall.setdefault(kind, []).append(hit)
        label.setdefault(kind, []).append(hit and set(over) == {kind})
        if not hit or set(over) != {kind}:
            print(f"miss {kind}: {scrubber.replace(text, findings)!r} <- {text!r}", file=sys.stderr)
    changed = [t for t in clean if scrubber.find(t)]
    for text in changed:
        print(f"false positive: {scrubber.replace(text, scrubber.find(text))!r}", file=sys.stderr)
    return {"recall": {k: round(sum(v) / len(v), 3) for k, v in recall.items()},
            "label_right": {k: round(sum(v) / len(v), 3) for k, v in label.items()},
            "false_positive_rate": round(len(changed) / len(clean), 3)}


def speed(scrubber, texts: list[str], repeat: int) -> float:
    began = time.perf_counter()
    for _ in range(repeat):
        for text in texts:
            findings = scrubber.find(text)
            if findings:
                scrubber.replace(text, findings)
    return round(repeat * len(texts) / (time.perf_counter() - began), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from hone.data.curate.pii import PiiSettings, Scrubber

    rows, clean = planted(args.per_kind, args.seed), list(CLEAN)
    with_ner, patterns_only = Scrubber(PiiSettings()), Scrubber(PiiSettings(ner_model=None))
    texts = [text for _, text, _ in rows] + clean
    result = {"bench": "pii_recall", "planted_per_kind": args.per_kind, "clean_sentences": len(clean),
              "ner_model": with_ner.ner_model, "with_ner": score(with_ner, rows, clean)}
    print("-- patterns only --", file=sys.stderr)
    result["patterns_only"] = score(patterns_only, rows, clean)
    result["examples_per_s"] = {"with_ner": speed(with_ner, texts, args.repeat),
                                "patterns_only": speed(patterns_only, texts, args.repeat)}
    result["ner_slowdown"] = round(result["examples_per_s"]["patterns_only"] / result["examples_per_s"]["with_ner"], 2)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
