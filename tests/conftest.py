import torch

# One thread: the small models and tensors here run fastest and steadiest that way, even when
# the other core is busy with a notebook worker.
torch.set_num_threads(1)
