"""learngene"""
