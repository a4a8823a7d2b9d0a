"""hqlt.memory"""
