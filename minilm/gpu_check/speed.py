"""Step 4: real-size speed on the device: Llama-2-7B's config with random weights, minilm's cuda
backend against PyTorch eager on the same GPU, as tokens/s and as a fraction of the memory
bandwidth measured in the same run.

    bandwidth     a device-to-device copy of 1 GiB (bytes read + bytes written, per second; median of 10)
    decode        greedy tokens/s after a 16-token prompt: the time from the first new token to the
                  33rd over 32 (median of 3 runs); every step reads every weight once, so
                  decode GB/s = tokens/s x the bytes of the weights one step reads (every matrix;
                  the embedding table only when the head shares it)
    prefill       tokens/s of one forward over a 256-token prompt, last position's logits only (median of 2)

The checkpoints (bfloat16 safetensors, 13.5 GB; a q4_0 GGUF, 3.8 GB) are written by
`minilm random-checkpoint` in child processes started before the other steps, so that writing
them overlaps the comparisons and the device tests. A dry run does the same on the tiny llama
config, on cuda-emulated and with torch on the CPU: it exercises the code, its numbers mean nothing.
"""
from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Settings:
    config: str = "llama-2-7b"
    prompt_tokens: int = 16
    new_tokens: int = 32
    decode_runs: int = 3
    prefill_tokens: int = 256
    prefill_runs: int = 2
    copy_bytes: int = 1 << 30


REAL = Settings()
DRY_RUN = Settings(config="llama", prompt_tokens=4, new_tokens=4, decode_runs=1, prefill_tokens=16, prefill_runs=1,
                   copy_bytes=1 << 24)
CHECKPOINTS = ("bfloat16", "q4_0")
# (row name, checkpoint, minilm mode): what minilm runs; torch eager bf16 is the baseline.
MINILM_ROWS = (("minilm bf16", "bfloat16", "exact"), ("minilm q4_0 (fast)", "q4_0", "auto"),
               ("minilm q4_0 (exact)", "q4_0", "exact"))


# --- the checkpoints, written while the other steps run --------------------------------------

class CheckpointWriters:
    """`minilm random-checkpoint` children writing the bf16 and q4_0 checkpoints into `folder`."""

    def __init__(self, folder: str, settings: Settings):
        from ..bench.runner import child_env
        self.paths, self.procs, self.logs = {}, {}, {}
        for dtype in CHECKPOINTS:
            out = os.path.join(folder, f"{settings.config}-{dtype}")
            self.paths[dtype] = os.path.join(out, "model.gguf") if dtype == "q4_0" else out
            self.logs[dtype] = open(os.path.join(folder, f"write-{dtype}.log"), "w+")
            self.procs[dtype] = subprocess.Popen(
                [sys.executable, "-m", "minilm.cli", "random-checkpoint", out, "--config", settings.config,
                 "--dtype", dtype], stdout=self.logs[dtype], stderr=subprocess.STDOUT, env=child_env())

    def wait(self) -> dict:
        """{dtype: path} once every child has finished; a failed child raises with its last line."""
        for dtype, proc in self.procs.items():
            if proc.wait() != 0:
                self.logs[dtype].seek(0)
                lines = [line for line in self.logs[dtype].read().splitlines() if line.strip()] or ["no output"]
                raise RuntimeError(f"writing the {dtype} checkpoint failed: {lines[-1]}")
        return self.paths

    def close(self) -> None:
        """Stop children still writing (an interrupted check) and close their logs."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in self.logs.values():
            f.close()


# --- the device: CuPy on a GPU, NumPy in a dry run -------------------------------------------

class Device:
    def __init__(self, gpu: bool):
        self.gpu = gpu
        if gpu:
            import cupy
            self.xp, self.synchronize = cupy, cupy.cuda.Device().synchronize
        else:
            import numpy
            self.xp, self.synchronize = numpy, (lambda: None)

    def free(self) -> None:
        """Give cached device memory back between models (CuPy's pool and torch's)."""
        gc.collect()
        if self.gpu:
            self.xp.get_default_memory_pool().free_all_blocks()
            try:
                import torch
                torch.cuda.empty_cache()
            except ImportError:
                pass


def copy_bandwidth(device: Device, nbytes: int, repeats: int = 10) -> float:
    """GB/s of a device-to-device copy: bytes read plus bytes written over the median time."""
    xp = device.xp
    source = xp.ones(nbytes // 4, dtype=xp.float32)
    target = xp.empty_like(source)
    times = []
    for _ in range(repeats + 1):
        device.synchronize()
        start = time.perf_counter()
        xp.copyto(target, source)
        device.synchronize()
        times.append(time.perf_counter() - start)
    del source, target
    device.free()
    return 2 * nbytes / statistics.median(times[1:]) / 1e9          # the first copy warms up


# --- the engines -------------------------------------------------------------------------------

class TorchEngine:
    """transformers' model in bfloat16, eager attention, on `device`: a greedy loop with its KV cache."""

    def __init__(self, folder: str, device: str):
        import torch
        from transformers import AutoModelForCausalLM
        self.torch, self.device = torch, device
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                          attn_implementation="eager").to(device).eval()
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        embedding = self.model.get_input_embeddings().weight
        tied = embedding is self.model.get_output_embeddings().weight
        self.decode_bytes = self.weight_bytes - (0 if tied else embedding.numel() * embedding.element_size())
        self.vocab_size = self.model.config.vocab_size

    def generate(self, ids, n):
        torch = self.torch
        tokens, times, start = [], [], time.perf_counter()
        with torch.no_grad():
            out = self.model(torch.as_tensor(ids, device=self.device), use_cache=True, logits_to_keep=1)
            for _ in range(n):
                next_id = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(int(next_id[0, 0]))                    # waits for the device
                times.append(time.perf_counter() - start)
                if len(tokens) < n:
                    out = self.model(next_id, past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
        return tokens, times

    def prefill(self, ids):
        with self.torch.no_grad():
            return self.model(self.torch.as_tensor(ids, device=self.device), logits_to_keep=1).logits.float().cpu()


def minilm_engine(path: str, backend: str, mode: str):
    """bench's MinilmEngine on the cuda backend, with the bytes one decode step reads."""
    from ..bench.engines import MinilmEngine, Spec
    gguf = path if path.endswith(".gguf") else None
    spec = Spec("gpu-check", "minilm", backend=backend, source="gguf" if gguf else "checkpoint",
                weight_dtype="bfloat16", mode=mode)
    engine = MinilmEngine(spec, os.path.dirname(path) if gguf else path, gguf)
    model = engine.model
    embedding = model.weights["model.embed_tokens.weight"]
    head = model.weights.get("lm_head.weight", embedding)
    table_bytes = sum(a.nbytes for a in embedding.arrays.values())
    engine.decode_bytes = engine.weight_bytes - (0 if head is embedding else table_bytes)
    return engine


def time_engine(engine, device: Device, settings: Settings) -> dict:
    """Decode and prefill tokens/s (medians), and the decode's weight traffic in GB/s."""
    from ..bench.measure import prompt_ids
    ids = prompt_ids(settings.prompt_tokens, engine.vocab_size)
    engine.generate(ids, 2)                                          # warm-up: kernels compiled, memory pooled
    decode, tokens = [], None
    for _ in range(settings.decode_runs):
        tokens, times = engine.generate(ids, 1 + settings.new_tokens)
        decode.append(settings.new_tokens / (times[-1] - times[0]))
    long_ids = prompt_ids(settings.prefill_tokens, engine.vocab_size, seed=1)
    engine.prefill(long_ids[:, :8])
    prefill = []
    for _ in range(settings.prefill_runs):
        device.synchronize()
        start = time.perf_counter()
        engine.prefill(long_ids)
        device.synchronize()
        prefill.append(settings.prefill_tokens / (time.perf_counter() - start))
    decode_tok_s = statistics.median(decode)
    return {"decode_tok_s": decode_tok_s, "decode_tok_s_runs": decode, "prefill_tok_s": statistics.median(prefill),
            "weight_bytes": engine.weight_bytes, "decode_bytes": engine.decode_bytes,
            "decode_gb_s": decode_tok_s * engine.decode_bytes / 1e9, "tokens": tokens[:8]}


def measure_row(name: str, weights: str, make_engine, device: Device, settings: Settings, bandwidth: float,
                log) -> dict:
    """Load, time and free one engine; an exception fails the row, not the step's other rows."""
    row = {"engine": name, "weights": weights}
    try:
        start = time.perf_counter()
        engine = make_engine()
        row["load_s"] = time.perf_counter() - start
        row.update(time_engine(engine, device, settings))
        row["bandwidth_fraction"] = row["decode_gb_s"] / bandwidth
        row["status"] = "measured"
        log(f"  {name}: decode {row['decode_tok_s']:.1f} tok/s ({100 * row['bandwidth_fraction']:.0f}% of "
            f"{bandwidth:.0f} GB/s), prefill {row['prefill_tok_s']:.0f} tok/s, loaded in {row['load_s']:.1f} s")
    except Exception as e:
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
        log(f"  {name}: FAILED: {row['error']}")
    engine = None
    device.free()
    return row


def torch_unavailable(gpu: bool) -> str | None:
    """Why the PyTorch baseline cannot run here, or None."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        return f"not installed: {e.name}"
    if gpu and not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    return None


def torch_row(folder: str, device: Device, settings: Settings, bandwidth: float, log) -> dict:
    """The PyTorch baseline on the same device (the CPU in a dry run), or why it cannot run."""
    reason = torch_unavailable(gpu=device.gpu)
    if reason:
        return {"engine": "torch eager bf16", "weights": "bfloat16", "status": f"unavailable: {reason}"}
    return measure_row("torch eager bf16", "bfloat16", lambda: TorchEngine(folder, "cuda" if device.gpu else "cpu"),
                       device, settings, bandwidth, log)


def run_speed(writers: CheckpointWriters, dry_run: bool, log) -> dict:
    settings = DRY_RUN if dry_run else REAL
    device = Device(gpu=not dry_run)
    backend = "cuda-emulated" if dry_run else "cuda"
    bandwidth = copy_bandwidth(device, settings.copy_bytes)
    log(f"  device-to-device copy: {bandwidth:.0f} GB/s")
    paths = writers.wait()
    rows = [measure_row(name, dtype, lambda p=paths[dtype], m=mode: minilm_engine(p, backend, m), device, settings,
                        bandwidth, log)
            for name, dtype, mode in MINILM_ROWS]
    rows.append(torch_row(paths["bfloat16"], device, settings, bandwidth, log))
    failed = any(r["status"] == "failed" for r in rows)
    result = {"status": "failed" if failed else "dry run" if dry_run else "measured", "backend": backend,
              "settings": asdict(settings), "copy_bandwidth_gb_s": bandwidth, "rows": rows}
    return {**result, "goals": {} if dry_run else goals(rows)}


def goals(rows: list[dict]) -> dict:
    """The targets for an H100 (not checks: a miss does not fail the run): bf16 decode at >= 60% of the
    measured bandwidth and at least as fast as PyTorch eager."""
    by_name = {r["engine"]: r for r in rows if r["status"] == "measured"}
    bf16, torch_row = by_name.get("minilm bf16"), by_name.get("torch eager bf16")
    return {"bf16 decode >= 60% of bandwidth": None if bf16 is None else bf16["bandwidth_fraction"] >= 0.6,
            "bf16 decode >= torch eager": None if not (bf16 and torch_row)
            else bf16["decode_tok_s"] >= torch_row["decode_tok_s"]}
