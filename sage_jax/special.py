"""Special token ids and the sequence layout shared by the tokenizer, the model and the analysis.

A training or analysis sequence is laid out as

    <bos> <question> q ... q <step> s1 ... <step> s2 ... <answer> a ... <eos> [<explain> e ... <eos>]

Each rationale step follows a `<step>` marker; `<step>` is also the boundary token that meta-cognitive
heads see at any distance. The ids are fixed so that `sage_jax.data` (which knows no model) and
`sage_jax.config` agree without importing each other.
"""

PAD = 0
BOS = 1
EOS = 2
STEP = 3
ANSWER = 4
EXPLAIN = 5
QUESTION = 6

NAMES = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>", STEP: "<step>", ANSWER: "<answer>", EXPLAIN: "<explain>",
         QUESTION: "<question>"}
NUM_SPECIAL = len(NAMES)
