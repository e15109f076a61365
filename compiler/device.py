"""Where fine-tuning and candidate evaluation run: `--device auto|cpu|cuda`.

Fine-tuning runs in torch (its CUDA device when there is one); candidate evaluation runs in
onnxruntime (its CUDAExecutionProvider when the installed onnxruntime has it). `auto` takes each
when present and the CPU otherwise; `cuda` insists, and is a one-line error on a machine without
it. Latency is always measured on the CPU provider: it is the deployment target the search
optimises for, not the machine the search runs on.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxcompress.compiler.errors import UsageError

# the choices of --device and --train-precision, spelled once: the CLI, CompressConfig and the
# trainer check against these
DEVICES = ("auto", "cpu", "cuda")
TRAIN_PRECISIONS = ("fp32", "bf16")  # what the trainer runs (FinetuneConfig.precision)
PRECISIONS = ("auto", *TRAIN_PRECISIONS)
CPU_PROVIDERS = ("CPUExecutionProvider",)
CUDA_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")  # ops CUDA lacks fall back to the CPU


@dataclass(frozen=True)
class Device:
    """The resolved choice: torch's device for training, onnxruntime's providers for evaluation."""

    torch: str = "cpu"
    providers: tuple[str, ...] = CPU_PROVIDERS

    @property
    def label(self) -> str:
        """What the report records: "cpu", "cuda", or which half runs on CUDA."""
        ort_cuda = self.providers[0] == "CUDAExecutionProvider"
        if self.torch == "cuda" and ort_cuda:
            return "cuda"
        if self.torch == "cuda":
            return "cuda (fine-tuning; onnxruntime evaluation on cpu)"
        if ort_cuda:
            return "cuda (onnxruntime evaluation; fine-tuning on cpu)"
        return "cpu"


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _onnxruntime_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def resolve_device(choice: str = "auto", evaluates: bool = True) -> Device:
    """The Device for `choice` on this machine. `evaluates`: the job also evaluates candidates in
    onnxruntime (compress), so `cuda` needs onnxruntime's CUDA provider as well as torch's."""
    if choice not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {choice!r}")
    if choice == "cpu":
        return Device()
    torch_cuda, ort_cuda = _torch_cuda(), evaluates and _onnxruntime_cuda()
    if choice == "cuda":
        if not torch_cuda:
            raise UsageError("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); use --device cpu or auto")
        if evaluates and not ort_cuda:
            raise UsageError("--device cuda: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); use --device auto "
                             "to fine-tune on the GPU and evaluate on the CPU")
    return Device(torch="cuda" if torch_cuda else "cpu", providers=CUDA_PROVIDERS if ort_cuda else CPU_PROVIDERS)


def native_bf16(torch_device: str = "cpu") -> bool:
    """Whether `torch_device` computes bfloat16 natively: on the CPU the AVX512-BF16 or AMX
    instructions (oneDNN's bf16 convolutions use them; without them bf16 is emulated and slower
    than float32), on CUDA what torch reports for the GPU."""
    import torch

    if torch_device == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, check, lambda: False)()) for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(choice: str = "auto", torch_device: str = "cpu") -> str:
    """The arithmetic fine-tuning runs in: "fp32", or "bf16" (torch autocast: convolutions and
    matrix products in bfloat16, weights, optimizer state, BatchNorm statistics and the losses in
    float32). `auto` takes bf16 where the device computes it natively (`native_bf16`), float32
    elsewhere; `bf16` insists (emulated where not native: slow, but the user asked for it).
    Measured on a 2-core AMD EPYC with AVX512-BF16: a ResNet-56 student's training step (batch 64,
    forward + backward + AdamW) 444 -> 214 ms with bf16 and channels-last tensors; the fine-tuned
    students' accuracy: bench/results/precision.md."""
    if choice not in PRECISIONS:
        raise UsageError(f"--train-precision must be one of {', '.join(PRECISIONS)}, got {choice!r}")
    if choice != "auto":
        return choice
    return "bf16" if native_bf16(torch_device) else "fp32"
