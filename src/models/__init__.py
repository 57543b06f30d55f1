"""Actor-critic models and the policy distribution."""

from src.models.actor_critic import ActorCritic, mlp_actor_critic, transformer_actor_critic

__all__ = ["ActorCritic", "mlp_actor_critic", "transformer_actor_critic"]
