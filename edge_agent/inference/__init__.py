"""(see docs/ARCHITECTURE.md)"""
