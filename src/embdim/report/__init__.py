"""Reports: plots of learned sizes and analyses of trained models (matplotlib, Agg backend)."""
