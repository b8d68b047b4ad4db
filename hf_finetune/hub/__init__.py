"""The Hub: pushing a finished output folder and rendering its model card from templates."""
