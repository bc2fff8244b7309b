"""RadFM data: its published CSV / JSON layouts (radfm_dataset_builder.py)."""
