"""Evaluation: loading trained models for inference, metrics and reports."""
