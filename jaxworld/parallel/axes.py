"""The one vocabulary of logical axis names.

Parameters are created with these names (`models/layers.py`); `mesh.rules` in
the config maps each name to mesh axes. Weight names and activation names are
kept apart so that, e.g., the batch can be split over `fsdp` while `embed`
weights are too, without the two choices being tied together.
"""

# Weights.
EMBED = "embed"        # model width D
MLP = "mlp"            # MLP hidden width
HEADS = "heads"        # attention heads
KV = "kv"              # per-head width
VOCAB = "vocab"        # token vocabulary V (dynamics input/output)
CODEBOOK = "codebook"  # VQ codes
LATENT = "latent"      # VQ code vector width
PATCH = "patch"        # flattened pixel patch P*P*C
LAYERS = "layers"      # the stacked-layers axis that nnx.scan runs over
POSITION = "position"  # position-embedding tables (spatial N or temporal T)
ACTION = "action"      # discrete action table A

# Activations.
BATCH = "batch"
FRAMES = "frames"      # time T, split by sequence parallelism in spatial ops
TOKENS = "tokens"      # tokens per frame N, split in temporal attention

ALL = (EMBED, MLP, HEADS, KV, VOCAB, CODEBOOK, LATENT, PATCH, LAYERS,
       POSITION, ACTION, BATCH, FRAMES, TOKENS)
