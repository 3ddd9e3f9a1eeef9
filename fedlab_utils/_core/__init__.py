"""The package's foundation, importing nothing else of it: argument checks (one error shape),
seeded random streams, runtime settings (threads, allocator, FAST mode), method labels and
colours, losses and metrics."""
