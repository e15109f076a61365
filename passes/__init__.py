"""onnxcompress.passes: graph-rewrite passes, one module each, registered by name."""
