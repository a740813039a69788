"""Reading a target process from outside: its maps, ELF images, memory and identity."""
