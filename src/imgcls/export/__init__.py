"""Deployment: export (ONNX, TorchScript, torch.export), INT8 quantization, pruning and inference benchmarks."""
