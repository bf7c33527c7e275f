"""The data path: `contract` (batches, rank split, the ShardLoader base), one module per backend (`torch_path`,
`dali_path`, `device_path`) and `factory.make_loader`. Imports flow one way: factory -> backends -> contract."""
