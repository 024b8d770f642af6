"""Router-R1 building blocks (arXiv 2506.09033): protocol, environment, candidate pools, rewards, PPO math.

Modules, each with one job (import them directly; this package imports nothing heavy):

* `routerforge.rl.protocol`    the <think>/<search>/<information>/<answer> text protocol: stop, parse, validate
* `routerforge.rl.reward`      SQuAD EM/F1, the rolling-window cost reward, the hierarchical total reward
* `routerforge.rl.ppo_math`    masked statistics, GAE over policy tokens, clipped policy/value losses,
                               entropy, KL estimators and the KL penalty in the reward (pure torch)
* `routerforge.rl.pool_config` typed pool config: models, descriptions, $/M prices
* `routerforge.rl.pools`       candidate pools behind one interface: recorded table, local HF LMs, OpenAI API
* `routerforge.rl.env`         the multi-turn episode driver with env-token masks and scoring
* `routerforge.rl.tasks`       offline GSM8K routing tasks from RouteLLM's recorded responses
* `routerforge.rl.generation`  the policy LM as the env's policy: batched generate, stop at </search>/</answer>
* `routerforge.rl.critic`      the PPO critic: a copy of the LM trunk with a 1-unit value head
* `routerforge.rl.rollout_batch` finished episodes -> padded tensors, masks, log-probs and values
* `routerforge.rl.grpo`        GRPO through TRL's GRPOTrainer (a deviation from the paper's PPO)
* `routerforge.rl.evaluate`    held-out evaluation of an export: EM, cost, calls per query, cost-quality points
"""
