"""The embedded SFTP endpoint: one chrooted, key-authenticated user per company."""
