"""lipstep.train"""
