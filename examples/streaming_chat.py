"""A chat whose answer streams in, token by token, through the official `openai` client.

ModelMora's `/v1/chat/completions` applies the model's chat template and, with `stream=True`,
sends server-sent events as the worker generates; the client prints each piece as it arrives.

    pip install openai
    cd my-project && modelmora serve          # a project with a text-generation model, chat
    python examples/streaming_chat.py --model chat "Tell me about foxes"

Options: `--url` (or MODELMORA_URL, default http://127.0.0.1:8000), `--key` (or
MODELMORA_API_KEY), `--model`, `--max-tokens`, `--temperature`, then the user's message.
"""

from __future__ import annotations

import argparse
import os

from openai import OpenAI


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MODELMORA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("MODELMORA_API_KEY"))
    parser.add_argument("--model", default="chat")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("message", nargs="?", default="Tell me about foxes")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    client = OpenAI(base_url=f"{args.url}/v1", api_key=args.key or "unused")
    stream = client.chat.completions.create(
        model=args.model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": args.message},
        ],
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = 0, None, None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                print(choice.delta.content, end="", flush=True)
                pieces += 1
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    tokens = usage.completion_tokens if usage else "?"
    print(f"\n[{pieces} chunks, {tokens} tokens, finish_reason={finish}]")


if __name__ == "__main__":
    main()
