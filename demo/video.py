"""Writing videos (H.264 in .mp4 via PyAV) with the synthetic-media notice in the container metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketswap.core.files import PendingFile
from pocketswap.core.manifest import SYNTHETIC_MEDIA_NOTICE

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")


class VideoWriter:
    """Write RGB frames to a video file. The file is assembled under a temporary name and renamed
    on `close()`, so an interrupted run never leaves a truncated video under the final name."""

    def __init__(
        self,
        path: str | Path,
        fps: float,
        notice: str | None = SYNTHETIC_MEDIA_NOTICE,
        audio_from: str | Path | None = None,
    ) -> None:
        """``audio_from``: a video whose first audio track is copied (not re-encoded) into this one."""
        import av

        self._file = PendingFile(path, VIDEO_SUFFIXES, "video")
        self.path, self._tmp = self._file.path, self._file.tmp
        self._container = av.open(str(self._tmp), "w")
        if notice:
            self._container.metadata["comment"] = notice
            self._container.metadata["description"] = notice
        self._fps = max(1, round(fps))
        self._stream = None
        self.frames = 0
        self._audio_source, self._audio = None, None
        if audio_from is not None:
            source = av.open(str(audio_from))
            if source.streams.audio:
                self._audio_source = source
                self._audio = (
                    source.streams.audio[0],
                    self._container.add_stream_from_template(source.streams.audio[0]),
                )
            else:
                source.close()

    def write(self, frame: np.ndarray) -> None:
        import av

        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self._fps)
            self._stream.width, self._stream.height = frame.shape[1] // 2 * 2, frame.shape[0] // 2 * 2
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "18", "preset": "veryfast"}
        frame = frame[: self._stream.height, : self._stream.width]
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        if self._audio is not None:
            source_stream, stream = self._audio
            for packet in self._audio_source.demux(source_stream):
                if packet.dts is None:  # the demuxer's end-of-stream packet
                    continue
                packet.stream = stream
                self._container.mux(packet)
            self._audio_source.close()
        self._container.close()
        return self._file.commit()

    def abort(self) -> None:
        if self._audio_source is not None:
            self._audio_source.close()
        self._container.close()
        self._file.discard()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_metadata(path: str | Path) -> dict[str, str]:
    import av

    with av.open(str(path)) as container:
        return dict(container.metadata)
