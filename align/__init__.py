"""align: LoRA-first alignment (SFT, reward modelling, DPO, PPO) on one frozen shared base."""

__version__ = "0.1.0"
