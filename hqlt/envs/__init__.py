"""hqlt.envs"""
