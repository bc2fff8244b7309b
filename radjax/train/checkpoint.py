"""orbax CheckpointManager over {train state, Grain iterator}: async, atomic, keep-N."""
import os

import grain
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
