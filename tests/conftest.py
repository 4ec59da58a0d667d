import os
import sys

# the project's modules live at the repository root, beside main_DisCoM-KD.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
