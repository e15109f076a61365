"""onnxcompress.compiler: ONNX import/export, the networkx IR and analysis, the cost model,
onnxruntime helpers, the PyTorch bridge and KD trainer, and the end-to-end pipeline."""
