"""A support agent on the fine-tuned router, through the official `openai` SDK's tool-calling loop.

The model gets the customer's message and the four tools; when it calls one, this script runs the matching local
Python function against a fake order database, sends the result back as a `tool` message, and prints the model's
final answer. Works against any OpenAI-compatible server that serves tools, e.g. `hone serve --config serve.yaml`:

    python examples/agents/agent.py --base-url http://127.0.0.1:8000/v1 --model router "Where is order 12345?"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).parent))
from make_data import SYSTEM, TOOLS  # noqa: E402  (the tools the router was trained on)

ORDERS = {  # order id -> the fake shop's record
    12345: {"item": "kettle", "status": "shipped", "eta": "Thursday", "city": "Leeds", "paid": 39.0},
    23456: {"item": "blender", "status": "delivered", "eta": None, "city": "York", "paid": 64.5},
    34567: {"item": "desk lamp", "status": "packing", "eta": "next Monday", "city": "Bath", "paid": 22.0},
}


def get_order_status(order_id: int) -> dict:
    """Where the order is."""
    order = ORDERS.get(order_id)
    if order is None:
        return {"error": f"no order {order_id}"}
    return {"order_id": order_id, "item": order["item"], "status": order["status"], "eta": order["eta"]}


def refund_order(order_id: int, reason: str) -> dict:
    """Refund the order in full and mark it refunded."""
    order = ORDERS.get(order_id)
    if order is None:
        return {"error": f"no order {order_id}"}
    order["status"] = "refunded"
    return {"order_id": order_id, "refunded": order["paid"], "reason": reason}


def update_address(order_id: int, city: str) -> dict:
    """Send the order to another city, unless it has already arrived."""
    order = ORDERS.get(order_id)
    if order is None:
        return {"error": f"no order {order_id}"}
    if order["status"] == "delivered":
        return {"error": f"order {order_id} was already delivered to {order['city']}"}
    order["city"] = city
    return {"order_id": order_id, "city": city, "status": order["status"]}


def talk_to_human(topic: str) -> dict:
    """Queue the customer for a person on the topic's team."""
    return {"queued": True, "team": topic, "wait_minutes": 4}


FUNCTIONS = {f.__name__: f for f in (get_order_status, refund_order, update_address, talk_to_human)}


def run_tool_call(call: dict) -> str:
    """Execute one OpenAI tool call (`{"id", "type", "function": {"name", "arguments": JSON string}}`) with the
    local function of that name; the result as the JSON string a `tool` message carries."""
    function = FUNCTIONS.get(call["function"]["name"])
    if function is None:
        return json.dumps({"error": f"unknown function {call['function']['name']!r}"})
    try:
        arguments = json.loads(call["function"]["arguments"])
        return json.dumps(function(**arguments))
    except (json.JSONDecodeError, TypeError) as error:
        return json.dumps({"error": f"bad arguments: {error}"})


def answer(client: OpenAI, model: str, request: str, max_rounds: int = 3, log=print) -> str:
    """Run the tool loop for one customer request: call the model, execute its calls, send the results back, until
    it answers in text. When it only repeats calls it already made, or after `max_rounds` rounds of calls, it is
    asked once more with tool_choice "none" (the tools stay in its prompt; the server then forbids calls).
    Returns the final text."""
    messages: list[dict] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]
    log(f"user: {request}")
    made: set[tuple[str, str]] = set()
    choice, rounds = "auto", 0
    while True:
        reply = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice=choice,
                                               temperature=0, max_tokens=120)
        message = reply.choices[0].message
        if not message.tool_calls:
            log(f"assistant: {message.content}")
            return message.content or ""
        calls = [call.model_dump(include={"id", "type", "function"}) for call in message.tool_calls]
        new = {(c["function"]["name"], c["function"]["arguments"]) for c in calls} - made
        if not new or rounds == max_rounds:
            log(f"(the model repeats {', '.join(c['function']['name'] for c in calls)}: asking for the answer)")
            choice = "none"
            continue
        made, rounds = made | new, rounds + 1
        messages.append({"role": "assistant", "content": message.content, "tool_calls": calls})
        for call in calls:
            result = run_tool_call(call)
            log(f"tool call: {call['function']['name']}({call['function']['arguments']}) -> {result}")
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", nargs="+", help="customer messages, one loop each")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="router", help="the served model or adapter name")
    parser.add_argument("--api-key", default="none", help="the server's API key, if it needs one")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    for request in args.requests:
        answer(client, args.model, request)
        print()


if __name__ == "__main__":
    main()
