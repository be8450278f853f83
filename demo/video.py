"""Writing videos (H.264 in .mp4 via PyAV) with the synthetic-media notice in the container metadata."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from pocketswap.core.errors import PocketswapError
from pocketswap.core.files import PendingFile
from pocketswap.core.manifest import SYNTHETIC_MEDIA_NOTICE
from pocketswap.demo.disk import disk_cause

log = logging.getLogger(__name__)

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
        name: str | None = None,
    ) -> None:
        """``audio_from``: a video whose first audio track is copied (not re-encoded) into this one, when
        this container can hold it (else the result is silent and ``audio_note`` says why). ``name``: how
        errors call the video (an upload's name: a temporary file is never named)."""
        import av

        self._file = PendingFile(path, VIDEO_SUFFIXES, "video")
        self.path, self._tmp = self._file.path, self._file.tmp
        self.name = name or str(self.path)
        self._container = av.open(str(self._tmp), "w")
        if notice:
            self._container.metadata["comment"] = notice
            self._container.metadata["description"] = notice
        self._fps = max(1, round(fps))
        self._stream = None
        self.frames = 0
        self._audio_source, self._audio = None, None
        self.audio_note: str | None = None
        if audio_from is not None:
            source = av.open(str(audio_from))
            track = source.streams.audio[0] if source.streams.audio else None
            if track is not None and (problem := _uncopyable(audio_from, self._container.format.name)) is None:
                self._audio_source = source
                self._audio = (track, self._container.add_stream_from_template(track))
            else:
                if track is not None:
                    self.audio_note = (f"its {track.codec_context.name} audio cannot go into {self.path.suffix}: "
                                       f"the swapped video is silent ({problem})")  # fmt: skip
                    log.info("%s: %s", self.name, self.audio_note)
                source.close()

    def write(self, frame: np.ndarray) -> None:
        with self._errors():
            self._write(frame)

    def _write(self, frame: np.ndarray) -> None:
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
        try:
            with self._errors():
                self._close()
        except BaseException:
            self.abort()  # a video that cannot be finished leaves no temporary file behind
            raise
        return self._file.commit()

    @contextlib.contextmanager
    def _errors(self):
        """PyAV's errors as one line naming the video, not its temporary file (a full disk stays an OSError)."""
        import av

        try:
            yield
        except av.error.FFmpegError as exc:
            if disk_cause(exc) is not None:
                raise
            detail = (getattr(exc, "strerror", None) or type(exc).__name__).strip()
            raise PocketswapError(f"{self.name}: the swapped video could not be written ({detail})") from None

    def _close(self) -> None:
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

    def abort(self) -> None:
        try:
            if self._audio_source is not None:
                self._audio_source.close()
            self._container.close()
        except Exception:  # closing a broken or full container fails again: the temporary file still goes
            log.debug("closing the aborted video %s failed", self.name, exc_info=True)
        finally:
            self._file.discard()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _uncopyable(source: str | Path, format_name: str) -> str | None:
    """Why ``source``'s first audio track cannot be copied into a ``format_name`` container (some codecs or
    channel layouts only fail as the file is finished: one packet is written and finished in memory to
    see), else None."""
    import io

    import av

    try:
        with av.open(str(source)) as container:
            track = container.streams.audio[0]
            probe = av.open(io.BytesIO(), "w", format=format_name)
            try:
                stream = probe.add_stream_from_template(track)
                for packet in container.demux(track):
                    if packet.dts is None:
                        continue
                    packet.stream = stream
                    probe.mux(packet)
                    break
            finally:
                probe.close()
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        return (getattr(exc, "strerror", None) or type(exc).__name__).strip()
    return None


def read_metadata(path: str | Path) -> dict[str, str]:
    import av

    with av.open(str(path)) as container:
        return dict(container.metadata)
