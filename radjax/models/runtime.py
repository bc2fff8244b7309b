"""How a part runs, kept apart from what it is: nothing here changes the parameters
a part exports, so a workdir trained on a GPU with cuDNN attention and remat exports
the same model as one trained on a CPU."""
import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
ATTENTION_IMPLS = {'xla': 'xla', 'cudnn': 'cudnn', 'auto': None}


@dataclasses.dataclass(frozen=True)
class Runtime:
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32
  attention_impl: Optional[str] = None  # 'cudnn' | 'xla' | None (JAX picks)
  remat_policy: str = 'none'  # radjax/models/layers.py REMAT_POLICIES
  # Layers stacked under nn.scan (one 'layers' entry) or unrolled ('layers_{i}');
  # conversion reads and writes both layouts.
  scan_layers: bool = True
  # With scan_layers: the same stacked parameters, the layers applied one by one
  # (layers.scanned_stack): faster on CPU, longer to compile. Ignored under remat.
  unroll_scan: bool = False
  # No backward pass through a frozen part: the composition stops gradients at its output.
  frozen: bool = False
