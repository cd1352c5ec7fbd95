"""Training-side code: mining pairs, adapting CLIP. Imports the library, never the reverse."""
