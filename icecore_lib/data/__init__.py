"""Data intake: manifest -> resolved files -> validated particle table -> packed uint8 cache -> split -> dataset bundle."""
