"""The thin PyTorch bridge: an ONNX graph interpreted node by node with torch ops, so that a student
can be fine-tuned with autograd and its weights written back into the very same graph.

Design:
- `OnnxModule` keeps the ONNX nodes (topologically sorted) and runs one small handler per op,
  looked up in `HANDLERS` (nodes.py), a table filled at import and read-only after. Unknown ops are refused when
  the module is built (UnsupportedOpError naming op and node), never guessed.
- Float initializers in weight positions (Conv/Gemm/MatMul weights and biases, BatchNormalization
  scale/bias, PRelu slopes, bias-like Add/Mul operands) become `nn.Parameter`s; BatchNormalization
  running statistics become persistent buffers (they change in training and are written back);
  everything else (shapes, Clip bounds, Resize scales, preprocessing constants) is a
  non-persistent buffer. ONNX names may contain '.' and ':', which torch forbids, so each
  initializer gets a safe key; `param_names` maps onnx name -> safe key.
- All float tensors are computed in float32 whatever their ONNX dtype: fp16 training on CPU is
  slow and unstable. `write_back` casts each trained value back to its original dtype and leaves
  every initializer whose value did not change byte-for-byte untouched.
- Float tensors held in Constant nodes are treated as constants, not trained.
- Exporters often fold BatchNorm into the preceding Conv; `reinsert_folded_bn` puts a trainable
  BatchNorm back after such convs (identity at insertion), and `write_back` folds it again.

Layout: nodes.py (NodeInfo, the handler table), graph.py (structure helpers), module.py
(OnnxModule, write-back, BatchNorm recalibration), handlers.py (one torch function per op).
"""

from onnxcompress.compiler.bridge import handlers  # noqa: F401  (fills the handler table)
from onnxcompress.compiler.bridge.module import OnnxModule, recalibrate_bn, to_torch
from onnxcompress.compiler.bridge.nodes import NodeInfo, supported_ops

__all__ = ["NodeInfo", "OnnxModule", "recalibrate_bn", "supported_ops", "to_torch"]
