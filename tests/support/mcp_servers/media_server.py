"""A real MCP server (mcp SDK `MCPServer`) whose tools answer with content blocks that are not text: an image, a
resource link, beside a line of text. Served over stdio; for the transcript tests (`flowctl logs` names each part)."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.types import ImageContent, ResourceLink, TextContent

server = MCPServer("media")

# A 12 KB "image": the bytes do not matter, only their kind and size.
PNG = "A" * (12 * 1024 * 4 // 3)


@server.tool()
def chart(title: str) -> list[TextContent | ImageContent | ResourceLink]:
    """A chart of the title's numbers: a caption, the image, and a link to its data."""
    return [
        TextContent(type="text", text=f"chart of {title}"),
        ImageContent(type="image", data=PNG, mimeType="image/png"),
        ResourceLink(type="resource_link", uri="file:///data/chart.csv", name="chart.csv", mimeType="text/csv"),
    ]


if __name__ == "__main__":
    server.run()
