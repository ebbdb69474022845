"""One module per notebook (00 overview ... 05 discovery), plus the torchrun entry point: what each notebook calls."""
