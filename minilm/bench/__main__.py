"""`python -m minilm.bench worker <command> <json>`: what a benchmark child runs; `python -m minilm.bench`
alone is `minilm bench`."""
import json
import sys


def worker(command: str, payload: dict) -> dict:
    from .engines import Unavailable
    try:
        if command == "measure":
            from .measure import Settings, measure
            return measure(payload["backend"], payload["model_dir"], payload["gguf"],
                           Settings(**payload["settings"]), payload.get("logits_path"), payload.get("llama_batch"))
        if command == "busy":
            from .busy import decode_speed
            return decode_speed(**payload)
        if command == "long":
            from .long_context import measure_long
            return measure_long(**payload)
    except Unavailable as e:
        return {"unavailable": str(e)}
    raise SystemExit(f"unknown worker command {command!r}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        print(json.dumps(worker(sys.argv[2], json.loads(sys.argv[3])), default=float))
    else:
        import argparse
        from . import add_arguments, main
        parser = argparse.ArgumentParser(prog="python -m minilm.bench", allow_abbrev=False)
        add_arguments(parser)
        sys.exit(main(parser.parse_args()))
