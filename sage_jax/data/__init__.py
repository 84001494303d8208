"""sage_jax.data: tokenizer, example schema, sources (procedural, reasoning-gym, prepared tfds datasets) and
grain pipelines. It knows no model: it imports only `sage_jax.layout` from the rest of the package.

    tok = Tokenizer.load(512)
    enc = encode_example(Example("3+1+9=?", ["3+1=4", "4+9=13"], "13"), tok)   # tokens, segments, step_index
    pipe = make_pipeline(default_mixture(2), tok, PipelineConfig(seq_len=256, batch_size=8))
    it = iter(pipe); batch = next(it); state = it.get_state()
"""

from sage_jax.data.builders import BUILDERS, BadInputError, PreparedSource, PrepareReport, prepare
from sage_jax.data.explanations import explain_dependencies, with_explanation
from sage_jax.data.formats import BadRecord, ReadReport, Skipped, read_file
from sage_jax.data.gym import GymSource
from sage_jax.data.mixture import STAGES, Mixture, SourceSpec, default_mixture
from sage_jax.data.multiple_choice import to_multiple_choice
from sage_jax.data.pipeline import DataPipeline, PipelineConfig, batch_spec, loss_mask, make_pipeline
from sage_jax.data.procedural import ChainSumKnobs, ProceduralSource, VariableChainKnobs, chain_sum, variable_chain
from sage_jax.data.schema import Example, SchemaError, encode_example
from sage_jax.data.sources import make_source
from sage_jax.data.tokenizer import Tokenizer, TokenizerError
