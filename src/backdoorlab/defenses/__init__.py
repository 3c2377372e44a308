"""Defences: input transforms, model repair, model detection and data detection (DESIGN.md)."""
