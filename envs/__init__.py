"""Search space, Gymnasium environment, rewards and the accuracy oracle.

Importing this package registers `DeployGym/Deploy-v0`; `gym.make("DeployGym/Deploy-v0", network=...,
target=...)` builds the environment through `envs.make.make_deployment_env`.
"""

import gymnasium as gym

ENV_ID = "DeployGym/Deploy-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="envs.make:make_deployment_env")
