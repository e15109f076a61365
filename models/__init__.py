"""onnxcompress.models: reference teacher CNNs (PyTorch), their training and ONNX export, and the
small bundled demo dataset."""
