"""Realistic prompts for drift tests and benchmarks, expanded from templates with many slots (fixed seed).

Three topics: `support` (customer-support tickets about software and devices: the reference traffic),
`legal` (questions about contract clauses) and `medical_billing` (questions about medical bills and insurance
claims): the two topic shifts. `stream` mixes a shifted topic into support traffic at a given share.
"""

from __future__ import annotations

import random
import re

SUPPORT = {
    "templates": [
        "{greeting}my {product} {issue} since {when}. {tried} {ask}",
        "{greeting}the {product} {issue} {context}. {ask}",
        "I {tried_lower} but my {product} still {issue_short}. {ask}",
        "{greeting}after {event}, the {feature} in the {product} {issue_short}. {urgency}{ask}",
        "Why does my {product} {issue_short} whenever I {action}?",
        "{greeting}I was charged {amount} for {plan} but {billing_issue}. {ask}",
        "How do I {howto} in the {product}?",
        "{greeting}I can't {action} in the {product}: it shows \"{error}\". {tried} {ask}",
        "Our team of {team_size} uses the {product} and {issue_short} {context}. {urgency}{ask}",
        "{greeting}is there a way to {howto} without {constraint}? We use the {product} on {platform}.",
        "Order {order} arrived {shipping_issue}. {ask}",
        "{greeting}the {feature} in the {product} {issue_short} on {platform}. {tried} {urgency}{ask}",
        "My account {account_issue}. {tried} {ask}",
        "Can you explain why the {product} {issue_short} after {event}? {ask}",
    ],
    "greeting": ["", "", "Hi, ", "Hello, ", "Hi team, ", "Good morning, ", "Hey, ", "Hello support, "],
    "product": [
        "Acme Cloud Backup", "Zephyr router", "PixelNote app", "SmartThermo T3", "LedgerLite",
        "Orbit wireless earbuds", "TaskFlow", "Nimbus 5 laptop", "PhotoVault", "HomeCam Pro",
        "SyncDrive", "KeyPad mechanical keyboard", "MailPilot", "Vista 27 monitor", "ChatDesk",
        "FitBand 2 tracker", "CodeNest IDE", "PrintJet 400 printer", "StreamBox", "Aero vacuum",
    ],
    "issue": [
        "keeps disconnecting", "won't turn on", "crashes on startup", "has been freezing every few minutes",
        "stopped syncing", "is draining the battery fast", "shows a blank screen", "keeps logging me out",
        "is extremely slow", "won't pair with my phone", "lost all my settings", "is making a clicking noise",
        "fails to update", "keeps asking for my password", "doesn't send notifications anymore",
    ],
    "issue_short": [
        "crashes", "freezes", "disconnects", "won't load", "stops syncing", "logs me out",
        "shows an error", "runs very slowly", "loses my data", "does not respond", "reboots by itself",
        "duplicates entries", "overheats",
    ],
    "when": [
        "yesterday", "last week", "the latest update", "this morning", "I moved house", "two days ago",
        "I changed my Wi-Fi password", "the firmware upgrade", "Monday",
    ],
    "tried": [
        "I already restarted it.", "I reinstalled it twice.", "I tried a factory reset.",
        "I cleared the cache and cookies.", "I checked the cables.", "Rebooting did not help.",
        "I updated to the newest version.", "", "",
    ],
    "tried_lower": [
        "restarted everything", "reinstalled the app", "did a factory reset", "cleared the cache",
        "followed the troubleshooting guide", "switched to another browser", "replaced the batteries",
    ],
    "ask": [
        "What should I do?", "Can you help?", "Please advise.", "How can I fix this?",
        "Is this a known issue?", "Can someone look into it?", "Do I need a replacement?",
        "Can I get a refund?", "Any workaround?", "Please help, this is urgent.",
    ],
    "context": [
        "when I open large files", "on the mobile app", "during video calls", "at night",
        "after about ten minutes", "when several users are online", "over VPN", "on the office network",
    ],
    "event": [
        "the last update", "resetting my password", "changing my plan", "moving to a new phone",
        "enabling two-factor authentication", "importing my old data", "upgrading to version 4.2",
    ],
    "feature": [
        "search", "export to PDF", "dark mode", "the calendar view", "offline mode", "auto-backup",
        "the sharing link", "the dashboard", "voice control", "the scheduler",
    ],
    "urgency": ["", "", "This is blocking our work. ", "We have a deadline tomorrow. ", "It's been days. "],
    "action": [
        "upload a photo", "log in", "export my data", "add a new user", "connect to Wi-Fi", "print",
        "change the language", "open a shared folder", "save a draft", "cancel my subscription",
    ],
    "amount": ["$12.99", "$49", "$120", "$8.50", "twice", "$299", "€19.99", "£30"],
    "plan": ["the Pro plan", "the annual subscription", "an extra seat", "the family plan", "a support add-on"],
    "billing_issue": [
        "I cancelled last month", "I never upgraded", "the discount was not applied",
        "the invoice shows the wrong company name", "I was charged twice", "I am still on the free trial",
    ],
    "howto": [
        "reset my password", "change the default language", "export all my contacts", "set up two-factor login",
        "transfer my license to a new computer", "share a folder with my team", "turn off email notifications",
        "restore a deleted file", "change the billing address", "connect it to Google Calendar",
    ],
    "error": [
        "Error 503", "Something went wrong", "Invalid token", "Connection timed out", "License expired",
        "Sync failed (code 17)", "Access denied", "Unknown device",
    ],
    "team_size": ["5", "12", "40", "200", "3", "80"],
    "constraint": [
        "losing my data", "contacting support", "admin rights", "reinstalling", "paying for an upgrade",
    ],
    "platform": ["Windows 11", "macOS", "Android", "iOS", "Linux", "a Chromebook", "the web version"],
    "order": ["#48213", "#10077", "A-5521", "#99310", "B-2020", "#66412"],
    "shipping_issue": [
        "damaged", "with a missing charger", "two weeks late", "with the wrong color", "without a manual",
    ],
    "account_issue": [
        "was locked after too many attempts", "shows someone else's email", "was suspended without notice",
        "can't be verified", "lost its premium status", "was merged with my old one",
    ],
}

LEGAL = {
    "templates": [
        "{greeting}does the {clause} in our {contract} allow the {party} to {right}?",
        "Is the {clause} enforceable in {jurisdiction} if the {contract} was signed {signing}?",
        "{greeting}what happens under the {contract} if the {party} {breach}? {ask}",
        "Can the {party} terminate the {contract} {termination} without paying {penalty}?",
        "{greeting}how should we interpret \"{phrase}\" in section {section} of the {contract}?",
        "Does a {clause} survive termination of the {contract}? {ask}",
        "{greeting}we are negotiating the {contract} with {counterparty}. Should we accept a {clause} capped at {cap}?",
        "If the {party} {breach}, is that a material breach under the {contract}? {ask}",
        "What notice period applies to {termination_noun} under a {contract} governed by {jurisdiction} law?",
        "{greeting}the {party} wants to assign the {contract} to {assignee}. Do we need to consent? {ask}",
        "Is an electronic signature valid for a {contract} in {jurisdiction}?",
        "{greeting}who bears liability for {liability} under the {clause} of our {contract}?",
    ],
    "greeting": ["", "", "Hi, ", "Hello, ", "Quick legal question: ", "Counsel, "],
    "clause": [
        "non-compete clause", "indemnification clause", "limitation of liability clause", "force majeure clause",
        "confidentiality clause", "arbitration clause", "auto-renewal clause", "exclusivity clause",
        "non-solicitation clause", "change of control clause", "most favoured nation clause", "warranty clause",
    ],
    "contract": [
        "master services agreement", "employment contract", "commercial lease", "software license agreement",
        "non-disclosure agreement", "supply agreement", "shareholders' agreement", "distribution agreement",
        "consulting agreement", "loan agreement",
    ],
    "party": ["supplier", "landlord", "tenant", "licensor", "licensee", "employer", "contractor", "buyer",
              "distributor", "lender"],
    "right": [
        "audit our books", "raise prices mid-term", "sublicense the software", "withhold payment",
        "hire our former employees", "terminate for convenience", "use our logo", "subcontract the work",
    ],
    "jurisdiction": ["New York", "California", "England and Wales", "Delaware", "Germany", "Ontario",
                     "Texas", "Singapore"],
    "signing": ["without witnesses", "by only one director", "after the start date", "electronically",
                "under duress", "in a foreign language"],
    "breach": [
        "misses the delivery deadline", "discloses confidential information", "fails to pay within 30 days",
        "goes insolvent", "subcontracts without approval", "violates the exclusivity terms",
    ],
    "ask": ["What are our options?", "Please advise.", "What does case law say?", "Any precedent?", ""],
    "termination": ["early", "before the initial term ends", "for convenience", "with 30 days' notice",
                    "after a change of control"],
    "termination_noun": ["termination for convenience", "non-renewal", "termination for breach",
                         "early termination"],
    "penalty": ["liquidated damages", "an early termination fee", "the remaining fees", "damages"],
    "phrase": ["best efforts", "reasonable endeavours", "time is of the essence", "consequential loss",
               "sole discretion", "material adverse change", "gross negligence"],
    "section": ["4.2", "7(b)", "12.1", "9", "15.3", "2.4(a)"],
    "counterparty": ["a large retailer", "a government agency", "a startup", "our main competitor",
                     "an overseas manufacturer"],
    "cap": ["12 months of fees", "the contract value", "$1 million", "twice the annual fees"],
    "assignee": ["its parent company", "a private equity buyer", "a competitor", "a subsidiary"],
    "liability": ["data breaches", "late delivery", "defective goods", "third-party IP claims",
                  "personal injury", "lost profits"],
}

MEDICAL_BILLING = {
    "templates": [
        "{greeting}why was my claim for {service} denied with code {code}? {ask}",
        "My insurer says {service} was {status}. Do I still owe {amount}?",
        "{greeting}I got a bill for {amount} from {provider} after {service}. {ask}",
        "How do I appeal a denied claim for {service} under my {plan}?",
        "{greeting}what does CPT code {cpt} on my statement from {provider} mean?",
        "Is {service} covered {network} under a {plan} with a {deductible} deductible?",
        "{greeting}the EOB for {service} shows {eob_issue}. {ask}",
        "Why was I billed separately by {provider} and the anesthesiologist for {service}?",
        "{greeting}can {provider} send my unpaid bill of {amount} to collections while the claim is {status}?",
        "Does my {plan} require prior authorization for {service}? {ask}",
    ],
    "greeting": ["", "", "Hi, ", "Hello, ", "Hello billing team, "],
    "service": ["an MRI", "physical therapy", "an ER visit", "a colonoscopy", "lab work", "an ambulance ride",
                "a telehealth visit", "a knee surgery", "an annual physical", "a dental crown", "allergy testing"],
    "code": ["CO-97", "CO-16", "PR-1", "CO-50", "N130", "CO-197"],
    "ask": ["What should I do?", "Is this correct?", "Can I dispute it?", "Who do I call?", ""],
    "status": ["out of network", "not medically necessary", "pending review", "partially paid",
               "billed to the wrong plan"],
    "amount": ["$1,240", "$86", "$3,900", "$415", "$12,300", "$250"],
    "provider": ["the hospital", "my cardiologist", "an urgent care clinic", "the imaging center",
                 "the lab", "my surgeon"],
    "plan": ["PPO plan", "HMO plan", "high-deductible plan", "Medicare Advantage plan", "Medicaid plan"],
    "cpt": ["99213", "80053", "71046", "97110", "36415", "99285"],
    "network": ["in network", "out of network", "at an in-network hospital by an out-of-network doctor"],
    "deductible": ["$500", "$1,500", "$3,000", "$6,000"],
    "eob_issue": ["a different date of service", "a charge I never received", "the allowed amount as zero",
                  "my copay applied twice", "the wrong provider"],
}

TOPICS = {"support": SUPPORT, "legal": LEGAL, "medical_billing": MEDICAL_BILLING}
SLOT = re.compile(r"\{(\w+)\}")


def prompts(topic: str, n: int, seed: int) -> list[str]:
    """`n` prompts of `topic`, each a random template with random slot values (deterministic for `seed`)."""
    rng = random.Random(f"{topic}:{seed}")
    spec = TOPICS[topic]
    return [_expand(rng.choice(spec["templates"]), spec, rng) for _ in range(n)]


def stream(shift_topic: str, shift_share: float, n: int, seed: int) -> list[str]:
    """`n` support prompts of which each is replaced, with probability `shift_share`, by a `shift_topic` one."""
    rng = random.Random(f"stream:{seed}")
    support = prompts("support", n, seed)
    shifted = prompts(shift_topic, n, seed)
    return [shifted[i] if rng.random() < shift_share else support[i] for i in range(n)]


def _expand(template: str, spec: dict, rng: random.Random) -> str:
    """`template` with every {slot} replaced by a random value, spaces squeezed, first letter capitalised."""
    text = re.sub(r"\s+", " ", SLOT.sub(lambda m: rng.choice(spec[m.group(1)]), template)).strip()
    return text[0].upper() + text[1:]
