"""Actor-critic models: the encoders and heads, the policy distribution, ensembles, populations and the portfolio
policy."""

from src.models.actor_critic import ActorCritic, mlp_actor_critic, transformer_actor_critic

__all__ = ["ActorCritic", "mlp_actor_critic", "transformer_actor_critic"]
