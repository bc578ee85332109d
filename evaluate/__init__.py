"""Evaluation: Spearman correlation and the field's other measures, tables and plots."""
