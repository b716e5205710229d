"""Gradio pages: one file per tab. Widgets <-> typed configs; no tensors here."""
