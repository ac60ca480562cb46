"""Runtime for neural models: ONNX Runtime sessions, providers, known model files."""
