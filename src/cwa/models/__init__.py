"""Models: loading (built-in, hub id or directory), their anatomy (layer, component and head
geometry of every parameter, the pool), the built-in family's training and the memory guard."""
