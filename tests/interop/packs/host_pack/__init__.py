"""A pack using ComfyUI's host modules: folder_paths, comfy.utils.ProgressBar, PromptServer."""

import comfy.utils
import folder_paths
from server import PromptServer


class ListCheckpoints:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("STRING", "INT")
    FUNCTION = "run"
    CATEGORY = "test/host"

    def run(self, ckpt_name, unique_id=None):
        path = folder_paths.get_full_path("checkpoints", ckpt_name)
        bar = comfy.utils.ProgressBar(3)
        for _ in range(3):
            bar.update(1)
        PromptServer.instance.send_sync("test.checkpoint", {"node": unique_id, "path": path})
        return (path, len(folder_paths.get_filename_list("checkpoints")))


NODE_CLASS_MAPPINGS = {"TestListCheckpoints": ListCheckpoints}
