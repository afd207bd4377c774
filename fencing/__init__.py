"""fencing"""
