"""hqlt.agents"""
