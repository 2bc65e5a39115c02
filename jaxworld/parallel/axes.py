"""The one vocabulary of logical axis names.

Parameters are created with these names (`models/st_transformer.py`); `mesh.rules` in
the config maps each name to mesh axes. Weight names and activation names are
kept apart so that, e.g., the batch can be split over `fsdp` while `embed`
weights are too, without the two choices being tied together.
"""

# Weights.
EMBED = "embed"        # model width D
MLP = "mlp"            # MLP hidden width F
HEADS = "heads"        # attention heads M
KV = "kv"              # per-head width K
VOCAB = "vocab"        # token vocabulary V (dynamics input/output)
LATENT = "latent"      # code vector width E (tokenizer, LAM)
PATCH = "patch"        # flattened pixel patch P = p*p*C
LAYERS = "layers"      # the stacked-layers axis that nnx.scan runs over
POSITION = "position"  # position-embedding tables (spatial N or temporal T)
ACTION = "action"      # discrete action table A

# Activations.
BATCH = "batch"
FRAMES = "frames"      # time T, split by sequence parallelism in spatial ops
TOKENS = "tokens"      # tokens per frame N, split in temporal attention

ALL = (EMBED, MLP, HEADS, KV, VOCAB, LATENT, PATCH, LAYERS, POSITION, ACTION,
       BATCH, FRAMES, TOKENS)

# The dimension letter of a weight axis in einsum specs -> its logical name.
# `st_transformer.dense` derives a weight's names from its spec, so the letters in
# the code and the sharding names cannot drift apart. S (sinusoidal features
# of a scalar, e.g. a noise level) is small and never split.
WEIGHT_LETTERS = {"D": EMBED, "F": MLP, "M": HEADS, "K": KV, "V": VOCAB,
                  "E": LATENT, "P": PATCH, "A": ACTION, "S": None}

# The mesh's own axis names, ordered by how much they talk: tensor,
# innermost, gets the closest devices.
MESH_AXES = ("data", "fsdp", "sequence", "tensor")
