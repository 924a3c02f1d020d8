"""Measuring tools: the step benchmark and the operator counter."""
