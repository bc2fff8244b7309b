"""orbax CheckpointManager over {train state, Grain iterator}: async, atomic, keep-N."""
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, workdir: str, keep: int, use_async: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=use_async)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state (with the target's shardings) and, in place, the iterator."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))['state']

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def save_for_inspection(path: str, state):
  """A one-off synchronous save outside the manager (e.g. the state that went NaN)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, state, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()


def restore_params(directory: str, step: int, path: tuple[str, ...] = (), target=None):
  """Only `params/<path...>` of a saved state (a training state or an imported one).

  `target` (ShapeDtypeStructs with shardings) restores each leaf straight into its
  shards; without it leaves come back as host numpy arrays. Optimizer moments are
  never read.
  """
  item_dir = os.path.join(directory, str(step), 'state')
  saved = ocp.PyTreeCheckpointer().metadata(item_dir).item_metadata.tree
  node, keys = saved, ('params', *path)
  for k in keys:
    if not isinstance(node, dict) or k not in node:
      raise KeyError(f'{item_dir}: no {"/".join(keys)} in the checkpoint')
    node = node[k]
  if target is None:
    target = node
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), node)
  else:
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  for k in reversed(keys):
    target, restore_args = {k: target}, {k: restore_args}
  out = ocp.PyTreeCheckpointer().restore(
      item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                            partial_restore=True))
  for k in keys:
    out = out[k]
  return out
